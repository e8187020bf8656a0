-- route_watch.lua - bundled plugin: counts which experts the router picks,
-- per layer, from every traced token (on_route), and shows the most used
-- experts in a text pane (:route-top, key F7); :route-reset clears.
-- Runs in the plugin sandbox: no io/os, its own _ENV.

local counts = {}   -- counts[layer][expert] = selections
local tokens = 0
local enabled = true

moe.on('on_route', function(entry)
  if not enabled then return end
  tokens = tokens + 1
  for _, l in ipairs(entry.layers) do
    if l.moe then
      local c = counts[l.layer]
      if not c then c = {} counts[l.layer] = c end
      for _, e in ipairs(l.sel) do c[e] = (c[e] or 0) + 1 end
    end
  end
end)

-- Text of the report: for each MoE layer, the top experts with their share.
local function report(n_top)
  local lines = { string.format('routing of %d traced tokens', tokens) }
  local layers = {}
  for l in pairs(counts) do layers[#layers + 1] = l end
  table.sort(layers)
  for _, l in ipairs(layers) do
    local list, total = {}, 0
    for e, n in pairs(counts[l]) do list[#list + 1] = { e = e, n = n } total = total + n end
    table.sort(list, function(a, b) return a.n > b.n or (a.n == b.n and a.e < b.e) end)
    local parts = {}
    for i = 1, math.min(n_top, #list) do
      parts[#parts + 1] = string.format('e%d %.0f%%', list[i].e, 100 * list[i].n / total)
    end
    lines[#lines + 1] = string.format('layer %2d: %s', l, table.concat(parts, '  '))
  end
  if #layers == 0 then lines[#lines + 1] = '(no routed tokens yet: turn tracing on)' end
  return table.concat(lines, '\n')
end

moe.ui.command('route-top', function(args)
  moe.ui.pane('route-top', report(tonumber(args) or 4))
end, 'most used experts per layer of the traced tokens [N]')

moe.ui.command('route-reset', function()
  counts, tokens = {}, 0
  moe.ui.notify('route-watch: counters cleared')
end, 'clear the route-watch counters')

moe.ui.bind('F7', function()
  enabled = not enabled
  moe.ui.notify('route-watch ' .. (enabled and 'on' or 'off'))
end, 'route-watch on/off')
