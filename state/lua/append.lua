-- Apply a batch's clicks to their sessions, each once. One call per hash slot and origin
-- partition: KEYS[i] are session hashes (keys.session) of one slot.
-- ARGV[1..4]: item cap, TTL, bytes of recent event ids kept, o:<origin partition> ("o:"
-- when unknown); then per click i, ARGV[5i..5i+4]: item, event id, ts, offset (-1: none),
-- the arm its session takes if it has none yet ("" : none).
-- Applied before (a re-delivery): its offset is at most the highest applied from its
-- partition, or its event id is among the recent ids r (newest last): constant memory.
-- A fresh click appends its item unless it repeats the newest, keeps the newest ARGV[1],
-- becomes the latest event, refreshes the TTL and consumes the previous list p
-- (state.feedback): each list is judged by the one click that followed it.
-- The session's arm a: the variant of the consumed list, else the arm given with the
-- click that found none. It is written here, with the click, not with the list that the
-- worker writes later: a worker that goes before writing its lists (killed, or its
-- partitions taken) leaves no session without its arm, and a click delivered again
-- after p was consumed still names it.
-- Replies, four per click: 1 if fresh else 0; the items joined by ITEM_SEP, oldest first;
-- p if the click's item is in it (an implicit hit) else 0; p's variant, else a (else 0).

local cap, ttl, ring_max, ofield = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local SEP = string.char(31)
local out = {}
for i = 1, #KEYS do
  local a = 5 * i
  local key, item, eid, ts, off = KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local s = redis.call('HMGET', key, 'i', 'n', 'l', 'r', ofield, 'p', 'a')
  local items, ring, seen, prev, hit, shown_by = s[1], s[4], false, s[6], 0, s[7] or 0
  if prev and prev ~= '' then
    shown_by = string.sub(prev, 1, (string.find(prev, SEP, 1, true) or (#prev + 1)) - 1)
  elseif shown_by == 0 and ARGV[a + 4] ~= '' then
    shown_by = ARGV[a + 4]
    redis.call('HSET', key, 'a', shown_by)
  end
  off = tonumber(off)
  if off >= 0 and s[5] and tonumber(s[5]) >= off then
    seen = true
  elseif ring and string.find(ring, eid, 1, true) then
    seen = string.find(SEP .. ring .. SEP, SEP .. eid .. SEP, 1, true) ~= nil
  end
  local fresh = 0
  if not seen then
    fresh = 1
    if prev and prev ~= '' then
      if string.find(SEP .. prev .. SEP, SEP .. item .. SEP, 1, true) then hit = prev end
      redis.call('HSET', key, 'p', '', 'a', shown_by)
    end
    if ring then
      ring = ring .. SEP .. eid
      while #ring > ring_max do
        ring = string.sub(ring, string.find(ring, SEP, 1, true) + 1)
      end
    else
      ring = eid
    end
    if not items then
      items = item
      redis.call('HSET', key, 'i', items, 'n', 1, 'l', item, 'lt', ts, 'r', ring, ofield, off)
    elseif s[3] ~= item then
      local n = tonumber(s[2]) + 1
      items = items .. SEP .. item
      if n > cap then
        items = string.sub(items, string.find(items, SEP, 1, true) + 1)
        n = cap
      end
      redis.call('HSET', key, 'i', items, 'n', n, 'l', item, 'lt', ts, 'r', ring, ofield, off)
    else
      redis.call('HSET', key, 'lt', ts, 'r', ring, ofield, off)
    end
    redis.call('EXPIRE', key, ttl)
  end
  out[4 * i - 3] = fresh
  out[4 * i - 2] = items
  out[4 * i - 1] = hit
  out[4 * i] = shown_by
end
return out
