-- token_stats.lua - bundled plugin: generation speed and early-exit counts.
-- on_token measures tokens per second over the last 64 tokens; on_exit
-- counts tokens that left before the last layer; :token-stats notifies a
-- one-line summary. Runs in the plugin sandbox.

local window = {}      -- times of the last tokens
local n_tokens, n_exits, exit_layers = 0, 0, 0
local last_piece = ''

moe.on('on_token', function(id, piece, pos)
  n_tokens = n_tokens + 1
  last_piece = piece
  window[#window + 1] = moe.time()
  if #window > 64 then table.remove(window, 1) end
end)

moe.on('on_exit', function(pos, token, layer, n_layer)
  n_exits = n_exits + 1
  exit_layers = exit_layers + layer
end)

local function summary()
  local rate = 0
  if #window >= 2 and window[#window] > window[1] then
    rate = (#window - 1) / (window[#window] - window[1])
  end
  local mean_exit = n_exits > 0 and exit_layers / n_exits or 0
  return string.format('%d tokens, %.1f tok/s, %d early exits (mean exit layer %.2f)',
    n_tokens, rate, n_exits, mean_exit)
end

moe.ui.command('token-stats', function() moe.ui.notify(summary()) end,
  'tokens generated, speed and early exits seen by plugins')
