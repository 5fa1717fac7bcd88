local n = 0
for j = 2, #ARGV do
  local id = ARGV[j]
  local st = redis.call('HGET', dkey(id), 'status')
  if st == 'delivered' or st == 'dead' then
    redis.call('DEL', dkey(id), P .. 'a:' .. id)
    redis.call('ZREM', P .. 'all', id)
    n = n + 1
  end
end
return n
