-- aor.lua - aggregation of reasoning (AoR; ../shared/DESIGN.md
-- "Workflows"): sample reasoning chains, bucket them by final answer, score
-- every chain, compare the best chains of each answer, and sample more while
-- the top two answers are close.
--
--   moe-studio script scripts/aor.lua [--model GGUF] [--task TASK.lua]
--       [--chains 4] [--batch 2] [--max-chains 12] [--tokens 24] [--top 2]
--       [--margin 0.5] [--seed 1] [--out RESULT.lua]
--
-- A task file returns {question = "...", answer = function(chain) -> answer
-- string or nil, score = function(ctx, question, chain) -> number
-- (optional)}. Default score: the model's mean per-token log-likelihood of
-- the chain after the question (local scoring). An answer's score is the
-- mean of its `top` best chain scores (global evaluation). Sampling stops
-- when the best answer leads the second by at least `margin` ("confident"),
-- when every chain agrees and at least `chains` were drawn ("unanimous"),
-- or at `max-chains` ("budget").

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script aor.lua [--model GGUF] [--task TASK.lua] [--chains N]
       [--batch N] [--max-chains N] [--tokens N] [--top N] [--margin X] [--seed S]
       [--out FILE]
]]
local o = U.parse_args(arg, {
  model = U.shared('models/real/stories260K.gguf'), task = '', chains = 4, batch = 2,
  max_chains = 12, tokens = 24, top = 2, margin = 0.5, seed = 1, out = '', temp = 1.0,
}, usage)

local task = o.task ~= '' and U.load_task(o.task) or {
  question = 'Once upon a time, there was a little',
  -- the "final answer" of a story chain: who it is about (its first word)
  answer = function(chain) return chain:match('^%s*(%a+)') and chain:match('^%s*(%a+)'):lower() end,
}

local model = U.load_model(o.model)
local info = model:info()
local ctx = assert(model:context { n_ctx = 512 })
local chains = {}

local function sample_chain(i)
  ctx:reset()
  local s <close> = model:sampler { temp = o.temp, top_k = 40, seed = o.seed * 1000 + i }
  local text, err = ctx:generate(task.question, { n = o.tokens, sampler = s })
  if not text then error(err, 0) end
  local ans = task.answer(text)
  local sc
  if task.score then
    sc = task.score(ctx, task.question, text)
  else
    sc = U.score_pair(ctx, task.question, text)
  end
  chains[#chains + 1] = { text = text, answer = ans, score = sc }
end

local function rank()
  local by = {}
  for _, c in ipairs(chains) do
    if c.answer then
      by[c.answer] = by[c.answer] or { answer = c.answer, scores = {} }
      table.insert(by[c.answer].scores, c.score)
    end
  end
  local buckets = {}
  for _, b in pairs(by) do
    table.sort(b.scores, function(x, y) return x > y end)
    local s = 0
    local n = math.min(o.top, #b.scores)
    for i = 1, n do s = s + b.scores[i] end
    b.count = #b.scores
    b.score = s / n
    buckets[#buckets + 1] = b
  end
  table.sort(buckets, function(x, y)
    if x.score ~= y.score then return x.score > y.score end
    return x.answer < y.answer
  end)
  return buckets
end

for i = 1, o.chains do sample_chain(i) end
local rounds, reason, buckets = 1, 'budget', nil
while true do
  buckets = rank()
  moe.emit('on_step', 'aor', rounds, (buckets[1] and buckets[1].answer or '?'))
  if #buckets >= 2 and buckets[1].score - buckets[2].score >= o.margin then
    reason = 'confident' break
  end
  if #buckets == 1 and #chains >= o.chains then reason = 'unanimous' break end
  if #chains >= o.max_chains then reason = 'budget' break end
  for _ = 1, math.min(o.batch, o.max_chains - #chains) do sample_chain(#chains + 1) end
  rounds = rounds + 1
end

print(string.format('aggregation of reasoning: %s, question %q', info.name, task.question))
local rows = {}
for i, c in ipairs(chains) do
  rows[#rows + 1] = { i, tostring(c.answer), U.fmt(c.score, 4), U.short(c.text, 50) }
end
U.print_table({ 'chain', 'answer', 'score', 'text' }, rows)
rows = {}
for _, b in ipairs(buckets) do rows[#rows + 1] = { b.answer, b.count, U.fmt(b.score, 4) } end
U.print_table({ 'answer', 'chains', 'score' }, rows)
local final = buckets[1] and buckets[1].answer
print(string.format('answer: %s (%s after %d chains in %d rounds)', tostring(final), reason,
  #chains, rounds))

U.save(o.out ~= '' and o.out or nil, { chains = chains, buckets = buckets, answer = final,
  reason = reason, rounds = rounds, margin = o.margin, top = o.top,
  max_chains = o.max_chains, min_chains = o.chains })
