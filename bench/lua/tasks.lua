-- wrk script for the task API benchmark.
-- Usage: wrk ... -s tasks.lua URL -- <profile> <data.lua>
-- <data.lua> (written by bench/run.py) returns real JWTs and real task ids, so
-- every request authenticates as a rotating user and hits a real row: no
-- single hot token or row that a cache could make look fast.
-- done() prints one "BENCH_JSON {...}" line that run.py parses.

local profile, data
local headers = {}      -- per-token header tables, built once per thread
local mcp_headers = {}  -- the same for POST /mcp (protocol 2026-07-28)
local mcp_legacy_headers = {}  -- ... and for a request without a protocol version (stateless, no handshake)
local big, small
local created = 0

local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local function header_for(token)
  return { ["Authorization"] = "Bearer " .. token,
           ["Content-Type"] = "application/json" }
end

local function mcp_header_for(token, modern)
  local h = { ["Authorization"] = "Bearer " .. token,
              ["Content-Type"] = "application/json",
              ["Accept"] = "application/json, text/event-stream" }
  if modern then
    h["MCP-Protocol-Version"] = "2026-07-28"
    h["Mcp-Method"] = "tools/call"
    h["Mcp-Name"] = "find_tasks"
  end
  return h
end

function init(args)
  profile = args[1]
  data = dofile(args[2])
  for i, token in ipairs(data.tokens) do
    headers[i] = header_for(token)
    mcp_headers[i] = mcp_header_for(token, true)
    mcp_legacy_headers[i] = mcp_header_for(token, false)
  end
  big = header_for(data.big)
  small = header_for(data.small)
  -- Different sequence per thread and per run.
  math.randomseed(os.time() * 1000 + (tid or 0))
end

local function list_req(h, query)
  return wrk.format("GET", "/api/tasks?limit=20" .. query, h)
end

local function list_any()
  return list_req(headers[math.random(#headers)], "")
end

local function get_one()
  local pair = data.pairs[math.random(#data.pairs)]
  return wrk.format("GET", "/api/tasks/" .. pair[2], headers[pair[1]])
end

local function create_one()
  created = created + 1
  local body = string.format(
    '{"title":"wrk task %d-%d","description":"created by the benchmark","priority":"high"}',
    tid or 0, created)
  return wrk.format("POST", "/api/tasks", headers[math.random(#headers)], body)
end

local function patch_one()
  local pair = data.pairs[math.random(#data.pairs)]
  return wrk.format("PATCH", "/api/tasks/" .. pair[2], headers[pair[1]],
                    '{"status":"completed"}')
end

-- tools/call find_tasks, the MCP twin of list_any (first page of 20, newest first).
local MCP_FIND = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"find_tasks",' ..
  '"arguments":{"limit":20},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",' ..
  '"io.modelcontextprotocol/clientCapabilities":{}}}}'
local MCP_FIND_LEGACY = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"find_tasks",' ..
  '"arguments":{"limit":20}}}'

local function mcp_find()
  return wrk.format("POST", "/mcp", mcp_headers[math.random(#mcp_headers)], MCP_FIND)
end

local function mcp_find_legacy()
  return wrk.format("POST", "/mcp", mcp_legacy_headers[math.random(#mcp_legacy_headers)], MCP_FIND_LEGACY)
end

-- The change feed polled with the user's current cursor: nothing new (data.cursors, one per token).
local function changes_idle()
  local i = math.random(#data.cursors)
  return wrk.format("GET", "/api/tasks/changes?since=" .. data.cursors[i], headers[i])
end

local function mixed()
  -- 70% reads (35 list, 35 get) / 30% writes (15 create, 15 patch)
  local r = math.random(100)
  if r <= 35 then return list_any() end
  if r <= 70 then return get_one() end
  if r <= 85 then return create_one() end
  return patch_one()
end

local builders = {
  list = list_any,
  get = get_one,
  create = create_one,
  patch = patch_one,
  mixed = mixed,
  mcp_find = mcp_find,
  mcp_find_legacy = mcp_find_legacy,
  changes = changes_idle,
  list_big = function() return list_req(big, "") end,
  list_small = function() return list_req(small, "") end,
  list_big_completed = function() return list_req(big, "&status=completed") end,
  list_small_completed = function() return list_req(small, "&status=completed") end,
  list_big_deep = function() return list_req(big, data.deep) end,
}

function request()
  return builders[profile]()
end

function done(summary, latency, requests)
  local e = summary.errors
  local mean = latency.mean
  if mean ~= mean then mean = 0 end  -- NaN when nothing completed
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
