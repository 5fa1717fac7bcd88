-- A probe succeeded: the target is back. Its deliveries that failed and wait for their retry
-- (not leased) become due now, so they go out in order at once instead of at their retry time.
local t, now = ARGV[2], ARGV[3]
local n = 0
for _, zk in ipairs({duekey(t), heldkey(t)}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zk, '(' .. now, '+inf')) do
    local v = redis.call('HMGET', dkey(id), 'status', 'attempts', 'lease_until', 'next_at')
    if v[1] == 'pending' and tonumber(v[2] or '0') > 0 and tonumber(v[4]) > tonumber(now)
        and (not v[3] or tonumber(v[3]) <= tonumber(now)) then
      redis.call('HSET', dkey(id), 'next_at', now)
      redis.call('ZADD', zk, 'XX', now, id)
      n = n + 1
    end
  end
end
return n
