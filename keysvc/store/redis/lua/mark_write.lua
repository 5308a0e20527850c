if mark then redis.call('SET', mark, ARGV[margv + 1], 'PXAT', ARGV[margv + 2]) end
