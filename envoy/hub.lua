-- AIGNE Hub: the small jobs Envoy's built-in filters cannot do.
--
-- On the way in, replace a request id the server would refuse with a fresh one (below), and
-- mark each request with the door it came through (`x-hub-door`), so the
-- server knows whether to describe an error for a REST client too. A client cannot forge it:
-- the header is always overwritten here. REST requests lose any `grpc-*` header.
--
-- On the way out, for REST answers: drop the gRPC-only headers, and where the server sent
-- an error as metadata (`x-hub-error`: the OpenAI-shaped JSON body, `x-hub-http-status`),
-- make that the HTTP status and body. Only error answers are buffered.

local GRPC = "application/grpc"

local function is_grpc(content_type)
  return content_type ~= nil and content_type:sub(1, #GRPC) == GRPC
end

-- A request id the server would refuse (service/rpc/call.py REQUEST_ID: 1 to 128 of
-- A-Z a-z 0-9 . _ : / + = -) is replaced here by a fresh one, so that the client, Envoy's
-- access log, the server's log and the usage record all carry the same id. Each worker's
-- Lua state is seeded apart (the time, and the address of a table of its own).
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 2147483647))

local function fresh_request_id()
  local parts = {}
  for i = 1, 8 do
    parts[i] = string.format("%04x", math.random(0, 65535))
  end
  return table.concat(parts)
end

local function valid_request_id(id)
  return id ~= nil and #id >= 1 and #id <= 128 and id:match("^[%w%._:/%+=%-]+$") ~= nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if not valid_request_id(headers:get("x-request-id")) then
    headers:replace("x-request-id", fresh_request_id())
  end
  -- HEAD is GET without the body (load balancers and caches use it): the routes and the
  -- transcoder know GET; the answer's body is dropped on the way out (envoy_on_response).
  if headers:get(":method") == "HEAD" then
    headers:replace(":method", "GET")
    handle:streamInfo():dynamicMetadata():set("hub", "head", "1")
  end
  if is_grpc(headers:get("content-type")) then
    headers:replace("x-hub-door", "grpc")
    return
  end
  headers:replace("x-hub-door", "rest")
  -- gRPC's own headers mean nothing from a REST client, and a malformed one (say an empty
  -- `grpc-timeout`) would make the gRPC server refuse the call before our code sees it.
  local reserved = {}
  for name, _ in pairs(headers) do
    if name:sub(1, 5) == "grpc-" then
      table.insert(reserved, name)
    end
  end
  for _, name in ipairs(reserved) do
    headers:remove(name)
  end
end

-- The answer to a HEAD: the GET's headers, its length, no body.
local function without_body(handle)
  local body = handle:body()
  local length = 0
  if body ~= nil then
    length = body:length()
    body:setBytes("")
  end
  handle:headers():replace("content-length", tostring(length))
end

function envoy_on_response(handle)
  local hub = handle:streamInfo():dynamicMetadata():get("hub")
  local head = hub ~= nil and hub["head"] == "1"
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return
  end
  local error_body = headers:get("x-hub-error")
  local status = headers:get("x-hub-http-status")
  for _, name in ipairs({"grpc-status", "grpc-message", "grpc-status-details-bin",
                         "grpc-accept-encoding", "x-hub-error", "x-hub-http-status"}) do
    headers:remove(name)
  end
  if error_body == nil then
    if head then
      without_body(handle)
    end
    return
  end
  local body = handle:body()
  headers = handle:headers() -- the handle from before body() is no longer valid
  headers:replace(":status", status or "500")
  headers:replace("content-type", "application/json")
  if body ~= nil then
    body:setBytes(head and "" or error_body)
  end
  if head then
    headers:replace("content-length", tostring(#error_body))
  end
end
