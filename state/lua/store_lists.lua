-- Each session's latest recommendation list (state.feedback), written at the start of the
-- next batch's round trip, only to a session that still exists (an expired one is not
-- brought back without a TTL). KEYS[i]: session hashes of one hash slot; ARGV[i]: a list
-- as variant SEP rec_id SEP item SEP ...

for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'p', ARGV[i]) end
end
return #KEYS
