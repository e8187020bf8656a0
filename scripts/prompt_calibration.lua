-- prompt_calibration.lua - intent-based prompt calibration (AutoPrompt
-- style; ../shared/DESIGN.md "Workflows").
--
--   moe-studio script scripts/prompt_calibration.lua [--model GGUF]
--       [--task TASK.lua] [--steps 8] [--patience 3] [--budget 400]
--       [--warmup 1] [--boundary 2] [--meta] [--out RESULT.lua]
--
-- A task file returns {intent = "...", prompt = "starting instruction",
-- examples = {{input = "...", output = "..."}, ...} (the labelled set),
-- pool = {...} (optional demonstrations for few-shot selection, same shape),
-- score = function(ctx, context, output) -> number (optional; default: the
-- model's mean per-token log-likelihood of output after context)}.
--
-- Each step scores the best prompt so far on the labelled set, looks at the
-- failures (outputs the model would not produce greedily, or scored below
-- the median), proposes new prompts from the scored history - rule-based
-- rewrites and few-shot selection (demonstrations most similar, by BM25, to
-- the failing inputs) for small models; with --meta (or a model above 100M
-- parameters) also a meta-prompt asking the model itself for a better
-- prompt - and adds boundary cases: variants of the failing inputs with
-- their labels. It stops on patience (steps without improvement), on the
-- evaluation budget or after --steps. At the end every prompt of the
-- history is scored on the final labelled set; the best one (among the
-- starting prompt and those proposed after the warm-up steps) is printed
-- with the history table.

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script prompt_calibration.lua [--model GGUF] [--task TASK.lua]
       [--steps N] [--patience N] [--budget N] [--warmup N] [--boundary N]
       [--meta] [--out FILE]
]]
local o = U.parse_args(arg, {
  model = U.shared('models/real/stories260K.gguf'), task = '', steps = 8, patience = 3,
  budget = 400, warmup = 1, boundary = 2, meta = false, out = '', n_ctx = 512,
}, usage)

local task = o.task ~= '' and U.load_task(o.task) or {
  intent = 'Finish the sentence of a story for small children with the right word.',
  prompt = 'Words:',
  examples = {
    { input = 'Once upon a time, there was a little', output = ' girl' },
    { input = 'She loved to play outside in the', output = ' park' },
    { input = 'One day, she saw a big, red', output = ' ball' },
    { input = 'The sun was shining and the birds were', output = ' singing' },
    { input = 'They played together all', output = ' day' },
    { input = 'The cat climbed up the', output = ' tree' },
  },
  pool = {
    { input = 'Tom went to the park with his', output = ' mom.' },
    { input = 'The dog wagged its', output = ' tail.' },
    { input = 'Lily was very', output = ' happy.' },
    { input = 'He wanted to play with the', output = ' ball.' },
  },
}
assert(type(task.examples) == 'table' and #task.examples > 0, 'task needs examples')
task.pool = task.pool or {}

local model = U.load_model(o.model)
local info = model:info()
local ctx = assert(model:context { n_ctx = o.n_ctx })
local use_meta = o.meta or info.n_params > 100e6

-- the labelled set grows with boundary cases; copy it
local examples = {}
for i, e in ipairs(task.examples) do examples[i] = { input = e.input, output = e.output } end

-- A prompt: an instruction plus a list of demonstrations (pool indices).
local function render(p)
  local parts = { p.instr }
  for _, i in ipairs(p.shots) do
    parts[#parts + 1] = task.pool[i].input .. task.pool[i].output
  end
  return table.concat(parts, '\n') .. '\n'
end

local evals = 0
-- Score of a prompt on the current labelled set: mean of per-example
-- scores; also the failures and the greedy accuracy.
local function score(p)
  local text = render(p)
  local sum, hits, per = 0, 0, {}
  for i, e in ipairs(examples) do
    local s, greedy
    if task.score then
      s = task.score(ctx, text .. e.input, e.output)
      greedy = false
    else
      s, greedy = U.score_pair(ctx, text .. e.input, e.output)
    end
    evals = evals + 1
    per[i] = { s = s, greedy = greedy }
    sum = sum + s
    if greedy then hits = hits + 1 end
  end
  local sorted = {}
  for i, r in ipairs(per) do sorted[i] = r.s end
  table.sort(sorted)
  local median = sorted[(#sorted + 1) // 2]
  local failures = {}
  for i, r in ipairs(per) do
    if not r.greedy and r.s <= median then failures[#failures + 1] = i end
  end
  return sum / #examples, hits / #examples, failures
end

local function copy_prompt(p)
  local s = {}
  for i, v in ipairs(p.shots) do s[i] = v end
  return { instr = p.instr, shots = s }
end

-- ---- proposals --------------------------------------------------------
local cues = task.cues or { 'A story:', 'Once upon a time.', 'The end.' }

-- Demonstrations most similar to the failing inputs (BM25), not yet used.
local pool_index = #task.pool > 0 and moe.util.bm25((function()
  local d = {}
  for i, e in ipairs(task.pool) do d[i] = e.input .. e.output end
  return d
end)()) or nil

local function propose(parent, failures, history)
  local out = {}
  local function add(p, rule) out[#out + 1] = { p = p, rule = rule } end
  -- few-shot selection near the failures
  if pool_index then
    local q = {}
    for _, i in ipairs(failures) do q[#q + 1] = examples[i].input end
    local used = {}
    for _, i in ipairs(parent.shots) do used[i] = true end
    local pick
    for _, hit in ipairs(pool_index:search(table.concat(q, ' '), #task.pool)) do
      if not used[hit.doc] then pick = hit.doc break end
    end
    if not pick then
      for i = 1, #task.pool do if not used[i] then pick = i break end end
    end
    if pick then
      local p = copy_prompt(parent)
      p.shots[#p.shots + 1] = pick
      add(p, 'add-shot ' .. pick)
    end
    if #parent.shots > 0 then
      local p = copy_prompt(parent)
      table.remove(p.shots, 1)
      add(p, 'drop-shot')
      if #parent.shots > 1 then
        local r = copy_prompt(parent)
        r.shots[1], r.shots[#r.shots] = r.shots[#r.shots], r.shots[1]
        add(r, 'reorder-shots')
      end
    end
  end
  -- rewrites of the instruction
  if task.intent and not parent.instr:find(task.intent, 1, true) then
    local p = copy_prompt(parent)
    p.instr = task.intent .. ' ' .. parent.instr
    add(p, 'state-intent')
  end
  local words = {}
  for w in parent.instr:gmatch('%S+') do words[#words + 1] = w end
  if #words > 2 then
    local p = copy_prompt(parent)
    p.instr = table.concat(words, ' ', 1, #words - 1)
    add(p, 'shorten')
  end
  for _, cue in ipairs(cues) do
    if not parent.instr:find(cue, 1, true) then
      local p = copy_prompt(parent)
      p.instr = parent.instr .. ' ' .. cue
      add(p, 'cue')
      break
    end
  end
  -- the meta-prompt: the model proposes from the scored history
  if use_meta then
    local lines = { 'Prompts and their scores (higher is better):' }
    for _, h in ipairs(history) do lines[#lines + 1] = h.instr .. ' => ' .. U.fmt(h.score) end
    lines[#lines + 1] = 'A better prompt:'
    ctx:reset()
    local text = ctx:generate(table.concat(lines, '\n') .. '\n', { n = 24, eos = true })
    local line = text and text:match('^%s*([^\n]+)')
    if line and #line > 3 then
      local p = copy_prompt(parent)
      p.instr = line
      add(p, 'meta')
    end
  end
  return out
end

-- Boundary cases: variants of failing inputs that keep their label.
local seen_inputs = {}
for _, e in ipairs(examples) do seen_inputs[e.input] = true end
local function boundary_cases(failures, max)
  local added = 0
  local variants = {
    function(s) return 'Then, ' .. s:sub(1, 1):lower() .. s:sub(2) end,
    function(s) return (s:gsub('^[^,]+,%s*', ''):gsub('^%l', string.upper)) end,
    function(s) return (s:gsub(' the ', ' the little ', 1)) end,
  }
  for _, i in ipairs(failures) do
    for _, f in ipairs(variants) do
      if added >= max then return added end
      local e = examples[i]
      local v = f(e.input)
      if v ~= e.input and #v > 3 and not seen_inputs[v] then
        seen_inputs[v] = true
        examples[#examples + 1] = { input = v, output = e.output, boundary = true, of = i }
        added = added + 1
        break
      end
    end
  end
  return added
end

-- ---- the loop -------------------------------------------------------------
local start = { instr = task.prompt or '', shots = {} }
local history = {}
local best = start
local best_score, best_acc, failures = score(start)
history[1] = { step = 0, instr = start.instr, shots = {}, prompt = render(start),
               score = best_score, acc = best_acc, n_eval = #examples, rule = 'start' }
local since_best, stop_reason = 0, 'steps'
local known = { [render(start)] = true }

for step = 1, o.steps do
  moe.ui.progress('prompt calibration', (step - 1) / o.steps)
  -- boundary cases near the current failures (then re-score the best)
  local nb = boundary_cases(failures, o.boundary)
  if nb > 0 then
    best_score, best_acc, failures = score(best)
    history[#history + 1] = { step = step, instr = best.instr, shots = best.shots,
      prompt = render(best), score = best_score, acc = best_acc, n_eval = #examples,
      rule = 'rescore +' .. nb .. ' boundary' }
  end
  local improved = false
  for _, cand in ipairs(propose(best, failures, history)) do
    local text = render(cand.p)
    if not known[text] then
      if evals + #examples > o.budget then stop_reason = 'budget' break end
      known[text] = true
      local s, acc, f = score(cand.p)
      history[#history + 1] = { step = step, instr = cand.p.instr, shots = cand.p.shots,
        prompt = text, score = s, acc = acc, n_eval = #examples, rule = cand.rule }
      if s > best_score then
        best, best_score, best_acc, failures, improved = cand.p, s, acc, f, true
      end
    end
  end
  moe.emit('on_step', 'prompt_calibration', step,
           string.format('best %.4f after %d evaluations', best_score, evals))
  if stop_reason == 'budget' then break end
  since_best = improved and 0 or since_best + 1
  if since_best >= o.patience then stop_reason = 'patience' break end
end
moe.ui.progress('prompt calibration', -1)

-- ---- final: every prompt on the final labelled set ------------------------
local final, best_final = {}, nil
local done = {}
for _, h in ipairs(history) do
  if not done[h.prompt] then
    done[h.prompt] = true
    local s, acc = score({ instr = h.instr, shots = h.shots })
    local r = { prompt = h.prompt, instr = h.instr, score = s, acc = acc, step = h.step,
                rule = h.rule }
    final[#final + 1] = r
    if (h.step == 0 or h.step > o.warmup - 1) and (not best_final or s > best_final.score) then
      best_final = r
    end
  end
end
local start_final = final[1]

print(string.format('prompt calibration: %s, %d labelled examples (%d boundary cases added)',
  info.name, #examples, #examples - #task.examples))
local rows = {}
for _, h in ipairs(history) do
  rows[#rows + 1] = { h.step, h.rule, U.fmt(h.score, 4), U.fmt(h.acc, 2), h.n_eval,
                      U.short(h.prompt, 50) }
end
U.print_table({ 'step', 'rule', 'score', 'acc', 'n', 'prompt' }, rows)
print(string.format('stopped: %s after %d evaluations', stop_reason, evals))
print(string.format('start score %.4f, best score %.4f (step %d, %s)', start_final.score,
  best_final.score, best_final.step, best_final.rule))
print('best prompt:')
print(best_final.prompt)

U.save(o.out ~= '' and o.out or nil, {
  model = o.model, examples = examples, history = history, final = final,
  start = start_final, best = best_final, stop_reason = stop_reason, evals = evals,
  warmup = o.warmup,
})
