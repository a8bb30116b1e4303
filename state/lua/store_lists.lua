-- Each session's latest recommendation list (state.feedback), written at the start of the
-- next batch's round trip, only to a session that still exists (an expired one is not
-- brought back without a TTL). KEYS[i]: session hashes of one hash slot; ARGV[i]: a list
-- as variant SEP rec_id SEP item SEP ...
-- A session has its p from its first click (append.lua), so one HSET that adds no field
-- found it; a new field means a vanished session (or one older than that rule), told
-- apart by its TTL: a session always has one.

for i = 1, #KEYS do
  if redis.call('HSET', KEYS[i], 'p', ARGV[i]) == 1 and redis.call('TTL', KEYS[i]) == -1 then
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
