-- Apply a batch's clicks to their sessions, each once. One call per hash slot and origin
-- partition: KEYS[i] are session hashes (keys.session) of one slot.
-- ARGV[1..4]: item cap, TTL, bytes of event digests kept, o:<origin partition> ("o:"
-- when unknown); then per click i, ARGV[5i..5i+4]: item, the event as ts SEP event id,
-- the id's digest (DIGEST bytes, state.sessions), offset (-1: none), the arm its
-- session takes if it has none yet ("" : none).
-- Applied before (a re-delivery): its offset is at most the highest applied from its
-- partition, or its digest is among the session's recent ones d (newest last, each
-- DIGEST bytes at a multiple of DIGEST), or, in a session stored before digests, its id
-- is among the recent ids r: constant memory.
-- A fresh click appends its item unless it repeats the newest, keeps the newest ARGV[1],
-- becomes the latest event e and consumes the previous list p (state.feedback): each
-- list is judged by the one click that followed it. All of it is one HSET: the cost of a
-- click follows the commands and values it moves, more than their bytes.
-- The TTL is set again when a hundredth of it has passed since it was last set (x, by
-- Redis's clock): a session expires between 0.99 TTL and TTL after its last click.
-- The session's arm a: the variant of the consumed list, else the arm given with the
-- click that found none. It is written here, with the click, not with the list that the
-- worker writes later: a worker that goes before writing its lists (killed, or its
-- partitions taken) leaves no session without its arm, and a click delivered again
-- after p was consumed still names it.
-- Replies, four per click: 1 if fresh else 0; the items joined by ITEM_SEP, oldest first;
-- p if the click's item is in it (an implicit hit) else 0; p's variant, else a (else 0).

local cap, ttl, ring_max, ofield = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local time = redis.call('TIME')
local now = time[1] + time[2] / 1e6
local refresh = tonumber(ttl) / 100
local SEP = string.char(31)
local DIGEST = 8
-- The field k set to v ahead of the rest when v is given: one HSET whatever the click
-- changes, without a table per click.
local function opt(v, k, ...)
  if v then return k, v, ... end
  return ...
end
local out = {}
for i = 1, #KEYS do
  local a = 5 * i
  local key, item, event, dg, off = KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local s = redis.call('HMGET', key, 'i', 'n', 'd', ofield, 'p', 'a', 'x', 'r')
  local items, ring, prev, hit, shown_by, arm = s[1], s[3], s[5], 0, s[6] or 0, nil
  if prev == '' then prev = nil end
  if prev then
    shown_by = string.sub(prev, 1, (string.find(prev, SEP, 1, true) or (#prev + 1)) - 1)
  elseif shown_by == 0 and ARGV[a + 4] ~= '' then
    shown_by = ARGV[a + 4]
    arm = shown_by
  end
  local seen = off ~= '-1' and s[4] and tonumber(s[4]) >= tonumber(off)
  if not seen and ring then
    local at = string.find(ring, dg, 1, true)
    while at and at % DIGEST ~= 1 do at = string.find(ring, dg, at + 1, true) end
    seen = at ~= nil
  end
  if not seen and s[8] then
    local eid = string.sub(event, string.find(event, SEP, 1, true) + 1)
    seen = string.find(SEP .. s[8] .. SEP, SEP .. eid .. SEP, 1, true) ~= nil
  end
  local fresh = 0
  if not seen then
    fresh = 1
    if prev then
      if string.find(SEP .. prev .. SEP, SEP .. item .. SEP, 1, true) then hit = prev end
      arm = shown_by
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
        n = s[2] + 1
        items = items .. SEP .. item
        if n > cap then
          items = string.sub(items, string.find(items, SEP, 1, true) + 1)
          n = cap
        end
      end
    else
      items = item
    end
    local expire = not s[7] or now - s[7] >= refresh
    redis.call('HSET', key, opt(expire and now, 'x', opt(arm, 'a', opt(arm and '', 'p',
      opt(n, 'n', opt(n and items, 'i', 'e', event, 'd', ring, ofield, off))))))
    if expire then redis.call('EXPIRE', key, ttl) end
  elseif arm then
    redis.call('HSET', key, 'a', arm)
  end
  out[4 * i - 3] = fresh
  out[4 * i - 2] = items
  out[4 * i - 1] = hit
  out[4 * i] = shown_by
end
return out
