-- hag.lua - hyperparameter-aware generation (../shared/DESIGN.md
-- "Workflows"): pick decoding settings per input. For each input the
-- script measures the model's uncertainty at the end of the input (entropy
-- of the next-token distribution), tries every setting of a small grid
-- (greedy, low, medium, high temperature), scores each continuation by
-- fluency (mean per-token log-likelihood under the model) plus diversity
-- (distinct token bigrams) and keeps the best; it also reports what a
-- rule on the entropy alone would have picked.
--
--   moe-studio script scripts/hag.lua [--model GGUF] [--task TASK.lua]
--       [--tokens 24] [--diversity 1.0] [--seed 1] [--out RESULT.lua]
--
-- A task file returns {inputs = {"...", ...}, settings = {{name = ...,
-- temp = ..., top_k = ..., top_p = ...}, ...} (optional)}.

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script hag.lua [--model GGUF] [--task TASK.lua] [--tokens N]
       [--diversity X] [--seed S] [--out FILE]
]]
local o = U.parse_args(arg, {
  model = U.shared('models/real/stories260K.gguf'), task = '', tokens = 24, diversity = 1.0,
  seed = 1, out = '', low_entropy = 1.0, high_entropy = 3.0,
}, usage)

local task = o.task ~= '' and U.load_task(o.task) or {
  inputs = { 'Once upon a time, there was a little', 'The dog', 'Lily and Tom went to the' },
}
local settings = task.settings or {
  { name = 'greedy', temp = 0 },
  { name = 'low', temp = 0.5, top_k = 20 },
  { name = 'medium', temp = 0.8, top_p = 0.9 },
  { name = 'high', temp = 1.2, top_p = 0.95 },
}

local model = U.load_model(o.model)
local info = model:info()
local ctx = assert(model:context { n_ctx = 512 })

local function distinct2(ids)
  if #ids < 2 then return 0 end
  local seen, n = {}, 0
  for i = 2, #ids do
    local k = ids[i - 1] .. ':' .. ids[i]
    if not seen[k] then seen[k] = true n = n + 1 end
  end
  return n / (#ids - 1)
end

local records = {}
for qi, input in ipairs(task.inputs) do
  ctx:reset()
  assert(ctx:decode(input))
  local entropy = ctx:entropy()
  local rule = entropy < o.low_entropy and 'greedy' or
    (entropy > o.high_entropy and 'high' or 'medium')
  local rec = { input = input, entropy = entropy, rule_pick = rule, tries = {} }
  local best
  for si, st in ipairs(settings) do
    ctx:reset()
    local params = { temp = st.temp, top_k = st.top_k, top_p = st.top_p, seed = o.seed + si }
    local text, ids = ctx:generate(input, { n = o.tokens, sampler = params })
    if not text then error(ids, 0) end
    local fluency = #ids > 0 and U.score_pair(ctx, input, text) or -math.huge
    local div = distinct2(ids)
    local try = { setting = st.name, text = text, fluency = fluency, distinct2 = div,
                  score = fluency + o.diversity * div }
    rec.tries[si] = try
    if not best or try.score > best.score then best = try end
  end
  rec.pick = best.setting
  rec.output = best.text
  records[qi] = rec
  moe.emit('on_step', 'hag', qi, best.setting)
end

print(string.format('hyperparameter-aware generation: %s, %d inputs, %d settings', info.name,
  #task.inputs, #settings))
local rows = {}
for _, r in ipairs(records) do
  for _, t in ipairs(r.tries) do
    rows[#rows + 1] = { U.short(r.input, 24), U.fmt(r.entropy, 2), t.setting, U.fmt(t.fluency, 3),
      U.fmt(t.distinct2, 2), U.fmt(t.score, 3), t.setting == r.pick and '<- pick' or '' }
  end
end
U.print_table({ 'input', 'entropy', 'setting', 'fluency', 'distinct2', 'score', '' }, rows)
for _, r in ipairs(records) do
  print(string.format('%s -> %s (entropy rule: %s): %s', U.short(r.input, 30), r.pick, r.rule_pick,
    U.short(r.output, 60)))
end
U.save(o.out ~= '' and o.out or nil, { records = records, diversity = o.diversity,
  n_settings = #settings })
