-- codechain.lua - the CodeChain revision loop (../shared/DESIGN.md
-- "Workflows"): ask for modular code, keep the samples that pass the task's
-- tests, extract their functions (sub-modules), embed each with the model,
-- cluster the embeddings with k-means (K shrinking over rounds: 5, 4, 3, 2,
-- 1), take the member nearest each centroid as a representative, add the
-- representatives to the prompt as relevant functions, regenerate.
--
--   moe-studio script scripts/codechain.lua [--model GGUF] [--task TASK.lua]
--       [--rounds 5] [--k-start 5] [--samples 4] [--tokens 48] [--layer -1]
--       [--seed 1] [--out RESULT.lua]
--
-- A task file returns {description = "...", header = "...", entry = "solve",
-- test = function(solve) -> true | false, why, seeds = {source, ...}}.
-- A solution is Lua source whose chunk returns the entry function; `test`
-- gets that function. Solutions run with an instruction limit. `seeds` are
-- solutions known beforehand (e.g. from an earlier run or a person); they
-- go through the same tests and extraction. A model that cannot write code
-- (the small reference models) has every sample fail: the report says so,
-- and the clustering works on the functions of the passing seeds.

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script codechain.lua [--model GGUF] [--task TASK.lua] [--rounds N]
       [--k-start K] [--samples N] [--tokens N] [--layer L] [--seed S] [--out FILE]
]]
local o = U.parse_args(arg, {
  model = U.shared('models/real/stories260K.gguf'), task = '', rounds = 5, k_start = 5,
  samples = 4, tokens = 48, layer = -1, seed = 1, out = '', n_ctx = 1024,
}, usage)

local default_task = {
  description = 'Write a Lua function solve(list) that returns the sum of the squares ' ..
    'of the even numbers in the list.',
  header = 'Write small helper functions first (one job each), then solve.',
  entry = 'solve',
  test = function(solve)
    local cases = { { { 1, 2, 3, 4 }, 20 }, { {}, 0 }, { { 5, 7 }, 0 }, { { -2, 6 }, 40 } }
    for _, c in ipairs(cases) do
      local got = solve(c[1])
      if got ~= c[2] then return false, ('solve gave %s, want %s'):format(got, c[2]) end
    end
    return true
  end,
  seeds = {
    [[local function is_even(n) return n % 2 == 0 end
local function square(n) return n * n end
local function solve(list)
  local s = 0
  for _, x in ipairs(list) do if is_even(x) then s = s + square(x) end end
  return s
end
return solve]],
    [[local function filter(list, pred)
  local out = {}
  for _, x in ipairs(list) do if pred(x) then out[#out + 1] = x end end
  return out
end
local function map(list, f)
  local out = {}
  for i, x in ipairs(list) do out[i] = f(x) end
  return out
end
local function sum(list)
  local s = 0
  for _, x in ipairs(list) do s = s + x end
  return s
end
local function solve(list)
  return sum(map(filter(list, function(x) return x % 2 == 0 end), function(x) return x * x end))
end
return solve]],
    [[local function evens(list)
  local out = {}
  for _, x in ipairs(list) do if x % 2 == 0 then out[#out + 1] = x end end
  return out
end
local function sum_of_squares(list)
  local s = 0
  for _, x in ipairs(list) do s = s + x * x end
  return s
end
local function solve(list) return sum_of_squares(evens(list)) end
return solve]],
    [[local function reduce(list, f, acc)
  for _, x in ipairs(list) do acc = f(acc, x) end
  return acc
end
local function even_square(x) if x % 2 == 0 then return x * x end return 0 end
local function solve(list)
  return reduce(list, function(a, x) return a + even_square(x) end, 0)
end
return solve]],
    [[local function is_odd(n) return n % 2 ~= 0 end
local function pow2(n) return n ^ 2 end
local function solve(list)
  local total = 0
  for i = 1, #list do
    if not is_odd(list[i]) then total = total + math.tointeger(pow2(list[i])) end
  end
  return total
end
return solve]],
    -- a wrong one: the tests must reject it
    [[local function square(n) return n * n end
local function solve(list)
  local s = 0
  for _, x in ipairs(list) do s = s + square(x) end
  return s
end
return solve]],
  },
}
local task = o.task ~= '' and U.load_task(o.task) or default_task
task.entry = task.entry or 'solve'
task.seeds = task.seeds or {}

local model = U.load_model(o.model)
local info = model:info()
local ctx = assert(model:context { n_ctx = o.n_ctx })
local ectx = assert(model:context { n_ctx = o.n_ctx }) -- embeddings

-- Run a solution's source under an instruction limit; returns ok, why.
local function run_tests(src)
  local env = setmetatable({}, { __index = { ipairs = ipairs, pairs = pairs, math = math,
    string = string, table = table, tostring = tostring, tonumber = tonumber,
    type = type, select = select, error = error, pcall = pcall } })
  local chunk, err = load(src, '=solution', 't', env)
  if not chunk then return false, 'does not compile: ' .. err end
  local co = coroutine.create(function()
    local solve = chunk()
    if type(solve) ~= 'function' then return false, 'chunk does not return a function' end
    return task.test(solve)
  end)
  debug.sethook(co, function() error('instruction limit', 0) end, '', 1000000)
  local ok, passed, why = coroutine.resume(co)
  if not ok then return false, 'error: ' .. tostring(passed) end
  return passed and true or false, why
end

-- Functions of a source: every `local function NAME` up to the first `end`
-- that makes the text compile on its own.
local function extract(src)
  local out = {}
  local pos = 1
  while true do
    local s, e, name = src:find('local%s+function%s+([%w_]+)', pos)
    if not s then break end
    local stop = e
    local found
    while true do
      local es, ee = src:find('%f[%w_]end%f[^%w_]', stop + 1)
      if not es then break end
      local text = src:sub(s, ee)
      if load(text, '=f', 't', {}) then found = text break end
      stop = ee
    end
    if found then
      out[#out + 1] = { name = name, text = found }
      pos = s + #found
    else
      pos = e + 1
    end
  end
  return out
end

-- The prompt of a round: description, modular-code instructions, the
-- representative functions of the previous round.
local function build_prompt(reps)
  local parts = { '-- ' .. task.description, '-- ' .. task.header }
  if #reps > 0 then
    parts[#parts + 1] = '-- Relevant functions:'
    for _, f in ipairs(reps) do parts[#parts + 1] = f.text end
  end
  parts[#parts + 1] = 'local function'
  return table.concat(parts, '\n')
end

local pool, pool_keys = {}, {}      -- functions of passing solutions
local function add_functions(src, origin)
  for _, f in ipairs(extract(src)) do
    if not pool_keys[f.text] then
      pool_keys[f.text] = true
      f.origin = origin
      pool[#pool + 1] = f
    end
  end
end

local seeds_passed = 0
for i, src in ipairs(task.seeds) do
  local ok = run_tests(src)
  if ok then
    seeds_passed = seeds_passed + 1
    add_functions(src, 'seed ' .. i)
  end
end
print(string.format('codechain: %s; %d seed solutions, %d pass the tests', info.name,
  #task.seeds, seeds_passed))

local rounds, reps = {}, {}
local sampler = model:sampler { temp = 0.8, top_p = 0.95, seed = o.seed }
for r = 1, o.rounds do
  moe.ui.progress('codechain', (r - 1) / o.rounds)
  local prompt = build_prompt(reps)
  local passed, why_failed = 0, {}
  for s = 1, o.samples do
    ctx:reset()
    local gen, err = ctx:generate(prompt, { n = o.tokens, sampler = sampler })
    if not gen then error(err, 0) end
    local src = 'local function' .. gen
    local ok, why = run_tests(src)
    if ok then
      passed = passed + 1
      add_functions(src, 'round ' .. r .. ' sample ' .. s)
    else
      why_failed[#why_failed + 1] = U.short(why, 30)
    end
  end
  local k_req = math.max(1, o.k_start - (r - 1))
  local k = math.min(k_req, #pool)
  local round = { round = r, k_requested = k_req, k = k, samples = o.samples,
    passed = passed, n_functions = #pool, prompt_chars = #prompt, functions = {},
    embeddings = {} }
  if k >= 1 then
    for i, f in ipairs(pool) do
      local e, err = ectx:embed(f.text, o.layer)
      if not e then error(err, 0) end
      round.embeddings[i] = moe.util.normalize(e)
      round.functions[i] = f.name .. ' (' .. f.origin .. ')'
    end
    local km = moe.util.kmeans(round.embeddings, k, { seed = o.seed + r, cosine = true })
    round.assign, round.centroids, round.sizes, round.reps = km.assign, km.centroids,
      km.sizes, km.reps
    round.inertia = km.inertia
    reps = {}
    for j = 1, k do reps[j] = pool[km.reps[j]] end
  end
  rounds[r] = round
  local names = {}
  for _, f in ipairs(reps) do names[#names + 1] = f.name end
  round.rep_names = names
  moe.emit('on_step', 'codechain', r, table.concat(names, ','))
end
moe.ui.progress('codechain', -1)

local rows = {}
for _, rd in ipairs(rounds) do
  rows[#rows + 1] = { rd.round, rd.samples, rd.passed, rd.n_functions, rd.k,
    table.concat(rd.sizes or {}, '/'), U.fmt(rd.inertia or 0, 4), table.concat(rd.rep_names, ', ') }
end
U.print_table({ 'round', 'samples', 'passed', 'functions', 'K', 'sizes', 'inertia',
  'representatives' }, rows)
local total_passed = 0
for _, rd in ipairs(rounds) do total_passed = total_passed + rd.passed end
print(string.format('model samples passing the tests: %d of %d', total_passed,
  o.rounds * o.samples))
print('final prompt:')
print(build_prompt(reps))

U.save(o.out ~= '' and o.out or nil, { model = o.model, rounds = rounds,
  seeds_passed = seeds_passed, n_seeds = #task.seeds, k_start = o.k_start })
