local id, status, next_at, err, code, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local dk = dkey(id)
if redis.call('EXISTS', dk) == 0 then return 0 end
local cur = redis.call('HMGET', dk, 'status', 'target', 'order_key', 'owner')
redis.call('RPUSH', P .. 'a:' .. id, ARGV[8])
redis.call('HINCRBY', dk, 'attempts', 1)
if ARGV[9] ~= '0' then redis.call('HINCRBY', dk, 'round_attempts', 1) end  -- a probe does not count
redis.call('HSET', dk, 'updated_at', now)
if err ~= NONE then redis.call('HSET', dk, 'last_error', err) else redis.call('HDEL', dk, 'last_error') end
if code ~= NONE then redis.call('HSET', dk, 'last_status', code) else redis.call('HDEL', dk, 'last_status') end
if next_at ~= NONE then redis.call('HSET', dk, 'next_at', next_at) end
drop_lease(id, cur[4])
if cur[1] ~= 'pending' then
  -- finished already (a replica took over a stale lease and finished it): never resurrect it
  if status == 'delivered' then redis.call('HSET', dk, 'status', 'delivered') end
  return 1
end
redis.call('HSET', dk, 'status', status)
if status == 'pending' then
  rescore(id, cur[2], score_of(id))
else
  unlink(id, cur[2], cur[3])
end
return 1
