local next_at = ARGV[2]
local n = 0
for j = 3, #ARGV do
  local id = ARGV[j]
  local cur = redis.call('HMGET', dkey(id), 'status', 'target', 'owner')
  if cur[1] == 'pending' then
    drop_lease(id, cur[3])
    if next_at ~= NONE then redis.call('HSET', dkey(id), 'next_at', next_at) end
    rescore(id, cur[2], score_of(id))
    n = n + 1
  end
end
return n
