local n = 0
for _, o in ipairs(redis.call('ZRANGEBYSCORE', P .. 'owners', '-inf', ARGV[2])) do
  local own = P .. 'own:' .. o
  for _, id in ipairs(redis.call('SMEMBERS', own)) do
    local cur = redis.call('HMGET', dkey(id), 'status', 'target', 'owner')
    if cur[1] == 'pending' and cur[3] == o then
      redis.call('HDEL', dkey(id), 'lease_until', 'owner')
      rescore(id, cur[2], score_of(id))
      n = n + 1
    end
  end
  redis.call('DEL', own)
  redis.call('ZREM', P .. 'owners', o)
end
return n
