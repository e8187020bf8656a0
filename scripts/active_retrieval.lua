-- active_retrieval.lua - retrieve from local documents only when the model
-- is uncertain (../shared/DESIGN.md "Workflows"; FLARE-style). For each
-- question the model drafts a short look-ahead; when the largest entropy of
-- its next-token distributions over the draft reaches the threshold, the
-- question plus the draft become a BM25 query over the documents, the top
-- documents are put before the question and the answer is generated again;
-- otherwise the draft is the answer.
--
--   moe-studio script scripts/active_retrieval.lua [--model GGUF]
--       [--docs DIR] [--task TASK.lua] [--threshold 2.5] [--k 2]
--       [--lookahead 8] [--tokens 24] [--out RESULT.lua]
--
-- Documents: every *.txt file of --docs (one document per file), or the
-- task's docs list. A task file returns {questions = {...}, docs = {...}}.

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script active_retrieval.lua [--model GGUF] [--docs DIR]
       [--task TASK.lua] [--threshold X] [--k N] [--lookahead N] [--tokens N] [--out FILE]
]]
local o = U.parse_args(arg, {
  model = U.shared('models/real/stories260K.gguf'), docs = '', task = '', threshold = 2.5,
  k = 2, lookahead = 8, tokens = 24, out = '',
}, usage)

local task = o.task ~= '' and U.load_task(o.task) or {
  questions = { 'Once upon a time, there was a little', 'The fox lived in a', 'Tom saw a big' },
  docs = {
    'The fox lived in a den under an old oak tree at the edge of the forest.',
    'Lily had a red ball. She played with the ball in the park every day.',
    'Tom saw a big ship in the harbour. The ship had white sails.',
    'The cat slept in the sun on the warm windowsill.',
  },
}

local docs = {}
if o.docs ~= '' then
  local p = io.popen('ls -1 "' .. o.docs .. '"/*.txt 2>/dev/null')
  for path in p:lines() do
    local f = io.open(path, 'r')
    if f then docs[#docs + 1] = f:read('a') f:close() end
  end
  p:close()
else
  docs = task.docs or {}
end
assert(#docs > 0, 'no documents')
local index = moe.util.bm25(docs)

local model = U.load_model(o.model)
local info = model:info()
local ctx = assert(model:context { n_ctx = 1024 })

local records = {}
for qi, q in ipairs(task.questions) do
  ctx:reset()
  local entropies = {}
  local draft = ctx:generate(q, { n = o.lookahead, on_token = function()
    entropies[#entropies + 1] = ctx:entropy() -- of the distribution after this token
  end })
  -- the first distribution (after the question) counts too
  ctx:reset()
  assert(ctx:decode(q))
  table.insert(entropies, 1, ctx:entropy())
  table.remove(entropies) -- the one after the last draft token predicts nothing drafted
  local max_h = -math.huge
  for _, h in ipairs(entropies) do if h > max_h then max_h = h end end
  local rec = { question = q, draft = draft, entropies = entropies, max_entropy = max_h,
                retrieved = max_h >= o.threshold, hits = {} }
  if rec.retrieved then
    rec.query = q .. ' ' .. draft
    rec.hits = index:search(rec.query, o.k)
    local parts = {}
    for _, h in ipairs(rec.hits) do parts[#parts + 1] = docs[h.doc] end
    parts[#parts + 1] = q
    ctx:reset()
    rec.answer = ctx:generate(table.concat(parts, '\n'), { n = o.tokens })
  else
    rec.answer = draft
  end
  records[qi] = rec
  moe.emit('on_step', 'active_retrieval', qi, rec.retrieved and 'retrieve' or 'answer')
end

print(string.format('active retrieval: %s, %d documents, threshold %.2f nats', info.name, #docs,
  o.threshold))
local rows = {}
for _, r in ipairs(records) do
  local ids = {}
  for _, h in ipairs(r.hits) do ids[#ids + 1] = h.doc end
  rows[#rows + 1] = { U.short(r.question, 30), U.fmt(r.max_entropy, 2),
    r.retrieved and 'yes' or 'no', table.concat(ids, ','), U.short(r.answer, 50) }
end
U.print_table({ 'question', 'max H', 'retrieved', 'docs', 'answer' }, rows)
U.save(o.out ~= '' and o.out or nil, { records = records, threshold = o.threshold, k = o.k,
  docs = docs })
