-- wrk script of bench_serve.py: POST /v1/predict with the requests of a file, in turn.
-- Each line of the file is "<client id>\t<JSON body>"; wrk's arguments after "--" are the
-- file and the line to start at, so successive runs can ask for keys no run asked before.
-- A third argument "close" asks for a new connection per request (bench_tls.py: a TLS
-- handshake per request).
local lines, first, sent = {}, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    local client, body = line:match("^([^\t]*)\t(.*)$")
    local headers = { ["Content-Type"] = "application/json", ["X-Client-Id"] = client }
    local key = os.getenv("RAY_APP_BENCH_KEY") -- the API's key, kept off wrk's command line
    if key then headers["Authorization"] = "Bearer " .. key end
    if args[3] == "close" then headers["Connection"] = "close" end
    lines[#lines + 1] = wrk.format("POST", "/v1/predict", headers, body)
  end
  first = tonumber(args[2] or "0")
end

function request()
  local raw = lines[(first + sent) % #lines + 1]
  sent = sent + 1
  return raw
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"status": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
