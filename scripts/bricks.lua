-- bricks.lua - brick configuration (../shared/DESIGN.md "EMoE", "Bricks"):
-- split a dense model's FFNs into emergent experts (EMoE), then on an MoE
-- model prune the experts a text uses least, merge two, grow a clone, and
-- update (train) only the most used expert of each layer on the text; save
-- every variant as GGUF, load it back and compare perplexity on the text.
--
--   moe-studio script scripts/bricks.lua [--dense GGUF] [--moe GGUF]
--       [--text FILE] [--dir DIR] [--n-expert 4] [--k 2] [--train-steps 8]
--       [--out RESULT.lua]
--
-- Expected mechanics: EMoE with k = N equals the dense model (up to float
-- summation order); pruning experts a text never selects leaves its
-- perplexity unchanged on renormalising architectures (Mixtral); merging
-- and growing change it a little; training one expert per layer on the
-- text lowers the text's perplexity while the other bricks stay frozen.

local dir = arg[0]:match('^(.*)/') or '.'
local U = dofile(dir .. '/script_util.lua')

local usage = [[
usage: moe-studio script bricks.lua [--dense GGUF] [--moe GGUF] [--text FILE]
       [--dir DIR] [--n-expert N] [--k K] [--out FILE]
]]
local o = U.parse_args(arg, {
  dense = U.shared('models/real/stories260K.gguf'),
  moe = U.shared('models/synthetic/tiny-mixtral.f32.gguf'),
  text = '', dir = os.getenv('TMPDIR') or '/tmp', n_expert = 4, k = 2, out = '',
  train_steps = 8,
}, usage)

local text = 'Once upon a time, there was a little girl named Lily. She loved to play ' ..
  'outside in the park. One day, she saw a big, red ball. She wanted to play with it.'
if o.text ~= '' then
  local f = assert(io.open(o.text, 'r'))
  text = f:read('a')
  f:close()
end

local results = {}
local function file_size(path)
  local f = io.open(path, 'rb')
  if not f then return 0 end
  local n = f:seek('end')
  f:close()
  return n
end

-- Perplexity of the text (BOS, then every token predicted).
local function perplexity(ctx, model)
  local ids = model:tokenize(text)
  local bos = { ids[1] }
  local rest = {}
  for i = 2, #ids do rest[#rest + 1] = ids[i] end
  local total, n = ctx:loglik(bos, rest)
  if not total then error(n, 0) end
  return math.exp(-total / n), n
end

local function count_kinds(model)
  local c = {}
  for _, b in ipairs(model:bricks()) do c[b.kind] = (c[b.kind] or 0) + 1 end
  local parts = {}
  for k, v in pairs(c) do parts[#parts + 1] = k .. '=' .. v end
  table.sort(parts)
  return table.concat(parts, ' ')
end

local function evaluate(name, path, setup)
  local m = U.load_model(path)
  local info = m:info()
  local ctx = assert(m:context { n_ctx = 512 })
  if setup then setup(ctx, info) end
  local ppl, n = perplexity(ctx, m)
  local r = { name = name, path = path, n_expert = info.n_expert,
    n_expert_used = setup and ctx:route_get_top_k(0) or info.n_expert_used,
    bytes = file_size(path), ppl = ppl, n_tokens = n, bricks = count_kinds(m) }
  results[#results + 1] = r
  ctx:close()
  m:close()
  return r
end

-- ---- EMoE on the dense model ----------------------------------------------
local base = evaluate('dense', o.dense)
local emoe_path = o.dir .. '/bricks-emoe.gguf'
local rep, err = moe.emoe(o.dense, emoe_path, { n_expert = o.n_expert, k = o.n_expert,
  seed = 1 })
local emoe_full, emoe_k
if not rep then
  print('EMoE split failed: ' .. err)
else
  emoe_full = evaluate(('emoe N=%d k=%d'):format(o.n_expert, o.n_expert), emoe_path)
  emoe_k = evaluate(('emoe N=%d k=%d'):format(o.n_expert, o.k), emoe_path,
    function(ctx) assert(ctx:route_top_k(-1, o.k)) end)
  emoe_full.mean_cos = rep.mean_cos
end
moe.emit('on_step', 'bricks', 1, 'emoe')

-- ---- prune / merge / grow on the MoE model ------------------------------------
local m = U.load_model(o.moe)
local info = m:info()
local ctx = assert(m:context { n_ctx = 512 })
assert(ctx:trace(true))
assert(ctx:decode(text))
local stats = assert(ctx:route_stats())
local moe_layers, least, least2, most, pruned_load = {}, {}, {}, {}, 0
for il = 0, info.n_layer - 1 do
  local st = stats[il + 1]
  if st and st.n_tokens > 0 then
    moe_layers[#moe_layers + 1] = il
    local order = {}
    for e = 0, info.n_expert - 1 do order[#order + 1] = e end
    table.sort(order, function(a, b)
      local la, lb = st.experts[a + 1].load, st.experts[b + 1].load
      if la ~= lb then return la < lb end
      return a < b
    end)
    least[il], least2[il], most[il] = order[1], order[2], order[#order]
    pruned_load = pruned_load + st.experts[order[1] + 1].load
  end
end
ctx:close()
m:close()
local original = evaluate('moe original', o.moe)

local function edit(name, file, op)
  local b, e = moe.bricks_open(o.moe)
  if not b then error(e, 0) end
  for _, il in ipairs(moe_layers) do assert(op(b, il)) end
  local path = o.dir .. '/' .. file
  assert(b:save(path))
  b:close()
  return evaluate(name, path)
end

local pruned = edit('prune least used', 'bricks-pruned.gguf',
  function(b, il) return b:prune(il, { least[il] }) end)
pruned.pruned_load = pruned_load
local merged = edit('merge two least used', 'bricks-merged.gguf',
  function(b, il) return b:merge(il, { least[il], least2[il] }) end)
local grown = edit('grow clone of most used', 'bricks-grown.gguf',
  function(b, il) return b:grow(il, most[il], 0.01, 7) end)

-- updating: train only the most used expert of each MoE layer on the text
local updated
local tr, terr = moe.trainer_load(o.moe)
if not tr then
  print('trainer: ' .. terr)
else
  local spec = {}
  for _, il in ipairs(moe_layers) do spec[#spec + 1] = ('blk.%d.expert.%d'):format(il, most[il]) end
  assert(tr:trainable(table.concat(spec, ',')))
  assert(tr:set_params { lr = 1e-3, warmup = 0, n_steps = o.train_steps, threads = 1 })
  local first, last
  for i = 1, o.train_steps do
    local st = assert(tr:step(text, { n_tok = 16 }))
    first = first or st.ce
    last = st.ce
  end
  local path = o.dir .. '/bricks-updated.gguf'
  assert(tr:save(path))
  local n_train, n_all = tr:n_params(true), tr:n_params()
  tr:close()
  updated = evaluate('update most used experts', path)
  updated.trainable, updated.n_params, updated.ce_first, updated.ce_last = n_train, n_all, first, last
end
moe.emit('on_step', 'bricks', 2, 'prune/merge/grow/update')

local rows = {}
for _, r in ipairs(results) do
  local ref = r.name:find('^moe') or r.name:find('^prune') or r.name:find('^merge') or
    r.name:find('^grow') or r.name:find('^update')
  local base_ppl = ref and original.ppl or base.ppl
  rows[#rows + 1] = { r.name, r.n_expert, r.n_expert_used, r.bytes, U.fmt(r.ppl, 4),
    string.format('%+.4f', r.ppl - base_ppl), r.bricks }
end
U.print_table({ 'variant', 'experts', 'k', 'bytes', 'ppl', 'delta', 'bricks' }, rows)
if pruned_load == 0 then
  print('the pruned experts were never selected on this text: perplexity must not change')
else
  print(('the pruned experts had %d selections on this text'):format(pruned_load))
end

U.save(o.out ~= '' and o.out or nil, { dense = base, emoe_full = emoe_full, emoe_k = emoe_k,
  original = original, pruned = pruned, merged = merged, grown = grown, updated = updated,
  results = results,
  moe_layers = moe_layers, n_expert = o.n_expert, k = o.k })
