-- script_util.lua - helpers shared by the workflow scripts in scripts/:
-- option parsing, finding the reference models, result files (a Lua table
-- literal a test can load back), tables printed as aligned columns.
-- Loaded with dofile from a script's own directory; plain Lua + moe.

local U = {}

-- Parse "--name value" / "--flag" options into a table; defaults gives the
-- known options and their default values (a boolean default = a flag).
-- Unknown options raise. Positional arguments go to opts._ (a list).
function U.parse_args(args, defaults, usage)
  local opts = { _ = {} }
  for k, v in pairs(defaults) do opts[k] = v end
  local i = 1
  while i <= #args do
    local a = args[i]
    local name = a:match('^%-%-([%w_%-]+)$')
    if a == '--help' or a == '-h' then
      io.write(usage or 'no help\n')
      os.exit(0)
    elseif name then
      local key = name:gsub('%-', '_')
      if defaults[key] == nil then error('unknown option --' .. name, 0) end
      if type(defaults[key]) == 'boolean' then
        opts[key] = true
      else
        i = i + 1
        local v = args[i]
        if v == nil then error('option --' .. name .. ' needs a value', 0) end
        if type(defaults[key]) == 'number' then
          v = tonumber(v) or error('option --' .. name .. ' needs a number', 0)
        end
        opts[key] = v
      end
    else
      opts._[#opts._ + 1] = a
    end
    i = i + 1
  end
  return opts
end

-- Path of a file of the reference data ($MOE_SHARED, default ../shared).
function U.shared(rel)
  local root = os.getenv('MOE_SHARED')
  if not root or root == '' then root = '../shared' end
  return root .. '/' .. rel
end

-- Load a model; small files (< 64 MiB) run on one thread, which is faster
-- for them than waking a pool (threads: override).
function U.load_model(path, threads)
  if not threads then
    local f = io.open(path, 'rb')
    local size = f and f:seek('end') or 0
    if f then f:close() end
    threads = size < 64 * 1048576 and 1 or nil
  end
  local m, err = moe.load(path, threads and { threads = threads } or nil)
  if not m then error('cannot load ' .. path .. ': ' .. err, 0) end
  return m
end

-- Load a task file: a Lua file returning a table.
function U.load_task(path)
  local chunk, err = loadfile(path, 't')
  if not chunk then error(err, 0) end
  local t = chunk()
  if type(t) ~= 'table' then error(path .. ' must return a table', 0) end
  return t
end

-- Serialize a value as Lua source (tables, strings, numbers, booleans).
local function ser(v, indent, out)
  local t = type(v)
  if t == 'table' then
    out[#out + 1] = '{\n'
    local n = #v
    for i = 1, n do
      out[#out + 1] = indent .. '  '
      ser(v[i], indent .. '  ', out)
      out[#out + 1] = ',\n'
    end
    local keys = {}
    for k in pairs(v) do
      if not (math.type(k) == 'integer' and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      out[#out + 1] = indent .. '  ['
      ser(k, '', out)
      out[#out + 1] = '] = '
      ser(v[k], indent .. '  ', out)
      out[#out + 1] = ',\n'
    end
    out[#out + 1] = indent .. '}'
  elseif t == 'string' then
    out[#out + 1] = string.format('%q', v)
  elseif t == 'number' then
    if v ~= v then out[#out + 1] = '(0/0)'
    elseif v == math.huge then out[#out + 1] = 'math.huge'
    elseif v == -math.huge then out[#out + 1] = '-math.huge'
    elseif math.type(v) == 'integer' then out[#out + 1] = tostring(v)
    else out[#out + 1] = string.format('%.17g', v) end
  elseif t == 'boolean' or t == 'nil' then
    out[#out + 1] = tostring(v)
  else
    out[#out + 1] = 'nil --[[' .. t .. ']]'
  end
end

function U.serialize(v)
  local out = {}
  ser(v, '', out)
  return table.concat(out)
end

-- Write a result table to path as "return {...}" (no-op when path is nil).
function U.save(path, v)
  if not path or path == '' then return end
  local f = assert(io.open(path, 'w'))
  f:write('return ', U.serialize(v), '\n')
  f:close()
end

-- Print rows (lists of values) as aligned columns under a header.
function U.print_table(header, rows)
  local w = {}
  local all = { header }
  for _, r in ipairs(rows) do all[#all + 1] = r end
  for _, r in ipairs(all) do
    for j, c in ipairs(r) do
      local s = tostring(c)
      if #s > (w[j] or 0) then w[j] = #s end
    end
  end
  for i, r in ipairs(all) do
    local cells = {}
    for j, c in ipairs(r) do
      local s = tostring(c)
      cells[j] = s .. string.rep(' ', w[j] - #s)
    end
    print((table.concat(cells, '  '):gsub('%s+$', '')))
    if i == 1 then
      local dash = {}
      for j = 1, #header do dash[j] = string.rep('-', w[j]) end
      print(table.concat(dash, '  '))
    end
  end
end

-- One line of text for a table cell: newlines shown as \n, cut to n chars.
function U.short(s, n)
  s = tostring(s):gsub('\n', '\\n')
  n = n or 40
  if #s > n then s = s:sub(1, n - 3) .. '...' end
  return s
end

function U.fmt(x, d)
  if type(x) ~= 'number' then return tostring(x) end
  return string.format('%.' .. (d or 3) .. 'f', x)
end

-- Mean per-token log-likelihood of `output` after `context` (and the count
-- of its tokens the model predicts greedily).
function U.score_pair(ctx, context, output)
  local total, n, _, greedy = ctx:loglik(context, output)
  if not total then error(n, 0) end
  if n == 0 then return 0, true end
  return total / n, greedy == n, total, n
end

return U
