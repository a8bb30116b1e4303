-- Apply a batch's clicks to their sessions, each once. One call per hash slot and origin
-- partition: KEYS[i] are session hashes (keys.session) of one slot.
-- ARGV[1..4]: item cap, TTL, bytes of event digests kept, o:<origin partition> ("o:"
-- when unknown); then per click i, ARGV[6i-1..6i+4]: item, event id, the id's digest
-- (DIGEST bytes, state.sessions), ts, offset (-1: none), the arm its session takes if
-- it has none yet ("" : none).
-- Applied before (a re-delivery): its offset is at most the highest applied from its
-- partition, or its digest is among the session's recent ones d (newest last, each
-- DIGEST bytes at a multiple of DIGEST), or, in a session stored before digests, its id
-- is among the recent ids r: constant memory.
-- A fresh click appends its item unless it repeats the newest, keeps the newest ARGV[1],
-- becomes the latest event (e, lt), refreshes the TTL and consumes the previous list p
-- (state.feedback): each list is judged by the one click that followed it. All that is
-- one HSET: a session's fields are written together, not one command each.
-- The session's arm a: the variant of the consumed list, else the arm given with the
-- click that found none. It is written here, with the click, not with the list that the
-- worker writes later: a worker that goes before writing its lists (killed, or its
-- partitions taken) leaves no session without its arm, and a click delivered again
-- after p was consumed still names it.
-- Replies, four per click: 1 if fresh else 0; the items joined by ITEM_SEP, oldest first;
-- p if the click's item is in it (an implicit hit) else 0; p's variant, else a (else 0).

local cap, ttl, ring_max, ofield = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local SEP = string.char(31)
local DIGEST = 8
local out = {}
for i = 1, #KEYS do
  local a = 6 * i - 1
  local key, item, eid, dg = KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local s = redis.call('HMGET', key, 'i', 'n', 'd', ofield, 'p', 'a', 'r')
  local items, ring, prev, hit, shown_by = s[1], s[3], s[5], 0, s[6] or 0
  local set = {}
  if prev and prev ~= '' then
    shown_by = string.sub(prev, 1, (string.find(prev, SEP, 1, true) or (#prev + 1)) - 1)
  elseif shown_by == 0 and ARGV[a + 5] ~= '' then
    shown_by = ARGV[a + 5]
    set = {'a', shown_by}
  end
  local off = tonumber(ARGV[a + 4])
  local seen = off >= 0 and s[4] and tonumber(s[4]) >= off
  if not seen and ring then
    local at = string.find(ring, dg, 1, true)
    while at and at % DIGEST ~= 1 do at = string.find(ring, dg, at + 1, true) end
    seen = at ~= nil
  end
  if not seen and s[7] and string.find(s[7], eid, 1, true) then
    seen = string.find(SEP .. s[7] .. SEP, SEP .. eid .. SEP, 1, true) ~= nil
  end
  local fresh = 0
  if not seen then
    fresh = 1
    if prev and prev ~= '' then
      if string.find(SEP .. prev .. SEP, SEP .. item .. SEP, 1, true) then hit = prev end
      set[#set + 1], set[#set + 2], set[#set + 3], set[#set + 4] = 'p', '', 'a', shown_by
    end
    if not ring then
      ring = dg
    elseif #ring < ring_max then
      ring = ring .. dg
    else
      ring = string.sub(ring, #ring - ring_max + DIGEST + 1) .. dg
    end
    local n = 1
    if items then
      local tail = string.sub(items, -#item - 1)
      if tail == item or tail == SEP .. item then
        n = nil
      else
        n = tonumber(s[2]) + 1
        items = items .. SEP .. item
        if n > cap then
          items = string.sub(items, string.find(items, SEP, 1, true) + 1)
          n = cap
        end
      end
    else
      items = item
    end
    if n then
      redis.call('HSET', key, 'i', items, 'n', n, 'lt', ARGV[a + 3], 'e', eid, 'd', ring,
        ofield, off, unpack(set))
    else
      redis.call('HSET', key, 'lt', ARGV[a + 3], 'e', eid, 'd', ring, ofield, off, unpack(set))
    end
    redis.call('EXPIRE', key, ttl)
  elseif #set > 0 then
    redis.call('HSET', key, unpack(set))
  end
  out[4 * i - 3] = fresh
  out[4 * i - 2] = items
  out[4 * i - 1] = hit
  out[4 * i] = shown_by
end
return out
