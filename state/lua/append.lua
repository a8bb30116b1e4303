-- Apply a batch's clicks to their sessions, each once. One call per hash slot and origin
-- partition: KEYS[i] are session hashes (keys.session) of one slot.
-- ARGV[1..6]: item cap, TTL, TTL slack, now (unix seconds), bytes of recent event ids
-- kept, o:<origin partition> ("o:" when unknown); then per click i, ARGV[4i+3..4i+6]:
-- item, event id, ts, offset (-1: none).
-- Applied before (a re-delivery): its offset is at most the highest applied from its
-- partition, or its event id is among the recent ids r (newest last): constant memory.
-- A fresh click appends its item unless it repeats the newest, keeps the newest ARGV[1],
-- becomes the latest event and consumes the previous list p (state.feedback): each list
-- is judged by the one click that followed it. Everything a click changes goes in one
-- HSET.
-- The session lives at least TTL after its last click: its expiry is pushed to TTL +
-- slack (at least 1 s), and x remembers until when (by the callers' clocks), so the
-- clicks of the next slack seconds need no EXPIRE of their own.
-- The variant of the consumed list stays in a (the session's arm), so a click delivered
-- again after p was consumed (a crash before the next list was written) still names it.
-- Replies, four per click: 1 if fresh else 0; the items joined by ITEM_SEP, oldest first;
-- p if the click's item is in it (an implicit hit) else 0; p's variant, else a's (else 0).

local cap, ttl, slack = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, ring_max, ofield = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local SEP = string.char(31)

-- Whether the session's newest item is item (it ends the joined items), without copies.
local function repeats(joined, item)
  local at = string.find(joined, item, -#item, true)
  return at ~= nil and at + #item - 1 == #joined and (at == 1 or string.byte(joined, at - 1) == 31)
end
local out = {}
for i = 1, #KEYS do
  local a = 4 * i + 3
  local key, item, eid, ts, off = KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local s = redis.call('HMGET', key, 'i', 'n', 'r', ofield, 'p', 'a', 'x')
  local items, ring, seen, prev, hit, shown_by = s[1], s[3], false, s[5], 0, s[6] or 0
  if prev and prev ~= '' then
    shown_by = string.sub(prev, 1, (string.find(prev, SEP, 1, true) or (#prev + 1)) - 1)
  end
  off = tonumber(off)
  if off >= 0 and s[4] and tonumber(s[4]) >= off then
    seen = true
  elseif ring and string.find(ring, eid, 1, true) then
    seen = string.find(SEP .. ring .. SEP, SEP .. eid .. SEP, 1, true) ~= nil
  end
  local fresh = 0
  if not seen then
    fresh = 1
    if ring then
      ring = ring .. SEP .. eid
      while #ring > ring_max do
        ring = string.sub(ring, string.find(ring, SEP, 1, true) + 1)
      end
    else
      ring = eid
    end
    local set = {'lt', ts, 'r', ring, ofield, off}
    if not items then
      items = item
      -- p from the start: store_lists tells a session from a vanished one by it.
      set[7], set[8], set[9], set[10], set[11], set[12] = 'i', items, 'n', 1, 'p', ''
    elseif not repeats(items, item) then
      local n = tonumber(s[2]) + 1
      items = items .. SEP .. item
      if n > cap then
        items = string.sub(items, string.find(items, SEP, 1, true) + 1)
        n = cap
      end
      set[7], set[8], set[9], set[10] = 'i', items, 'n', n
    end
    if prev and prev ~= '' then
      if string.find(prev, item, 1, true)
          and string.find(SEP .. prev .. SEP, SEP .. item .. SEP, 1, true) then
        hit = prev
      end
      local n = #set
      set[n + 1], set[n + 2], set[n + 3], set[n + 4] = 'p', '', 'a', shown_by
    end
    local until_ = tonumber(s[7])
    -- One second of margin: the script runs a moment after the caller read its clock.
    if not until_ or until_ < now + ttl + 1 then
      until_ = now + ttl + slack
      local n = #set
      set[n + 1], set[n + 2] = 'x', until_
      redis.call('HSET', key, unpack(set))
      redis.call('EXPIRE', key, ttl + slack)
    else
      redis.call('HSET', key, unpack(set))
    end
  end
  out[4 * i - 3] = fresh
  out[4 * i - 2] = items
  out[4 * i - 1] = hit
  out[4 * i] = shown_by
end
return out
