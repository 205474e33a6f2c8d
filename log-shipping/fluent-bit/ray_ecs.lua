-- Ray's, Serve's and ray-app's log lines onto ECS (Elastic Common Schema) field names, for
-- Fluent Bit's lua filter (fluent-bit.yaml: call ray_to_ecs, time_as_table on).
--
-- A record is one line of a Ray log file: a JSON object decoded by the tail input's json
-- parser, or {log = "<the line>"} when the line is not JSON (print output, tracebacks).
--   * ray-app's own lines (ray_app/core/logs.py) are ECS already: kept as they are;
--   * Ray's JSON lines (ray.LoggingConfig(encoding="JSON")) and Serve's (logging_config
--     encoding JSON) name their fields levelname, asctime, job_id, deployment, ...: renamed
--     below, Ray's under "ray.";
--   * any other key without a dot (extra fields a user logged) moves under ray.extra, which
--     the index template stores without indexing, so no line is ever refused for a type clash.
-- The line's own time becomes the record's time, and Fluent Bit's es output writes it as
-- @timestamp; the time fields themselves are dropped.
--
-- tests/infra/test_log_shipping.py runs this file in LuaJIT (Fluent Bit's Lua) on lines the
-- application and Ray's own formatters write, and checks the result against the template.

RAY_FIELDS = {
  levelname = "log.level",
  filename = "log.origin.file.name",
  lineno = "log.origin.file.line",
  process = "process.pid",
  exc_text = "error.stack_trace",
  request_id = "trace.id",
  job_id = "ray.job.id",
  worker_id = "ray.worker.id",
  node_id = "ray.node.id",
  actor_id = "ray.actor.id",
  actor_name = "ray.actor.name",
  task_id = "ray.task.id",
  task_name = "ray.task.name",
  task_func_name = "ray.task.function",
  application = "ray.serve.application",
  deployment = "ray.serve.deployment",
  replica = "ray.serve.replica",
  component_name = "ray.serve.component.name",
  component_id = "ray.serve.component.id",
  component_type = "ray.serve.component.type",
  route = "ray.serve.route",
}
-- Where a line's time may be, most precise first; all are dropped from the record.
TIME_FIELDS = { "timestamp_ns", "@timestamp", "asctime" }
-- ECS fields without a dot in their name.
ECS_TOP_LEVEL = { message = true, tags = true, labels = true }
ECS_VERSION = "8.17.0"

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil):
-- no os.time, whose answer depends on the machine's time zone.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- "2026-11-30T04:17:50.123Z" (ECS) or "2026-11-30 04:17:50,123" (Python's asctime, in the
-- pod's zone: UTC in the Ray images) as {sec, nsec}; nil when it is neither.
local function parse_time(text)
  local y, mo, d, h, mi, s, frac = string.match(text,
    "^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)[.,]?(%d*)")
  if not y then return nil end
  local sec = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  local nsec = 0
  if frac ~= "" then nsec = math.floor(tonumber(string.sub(frac .. "000000000", 1, 9))) end
  return { sec = sec, nsec = nsec }
end

local function event_time(record)
  local ns = tonumber(record["timestamp_ns"])
  if ns then
    local sec = math.floor(ns / 1e9)
    return { sec = sec, nsec = math.floor(ns - sec * 1e9) }
  end
  for _, key in ipairs(TIME_FIELDS) do
    if type(record[key]) == "string" then
      local t = parse_time(record[key])
      if t then return t end
    end
  end
  return nil
end

function ray_to_ecs(tag, timestamp, record)
  local out = {}
  -- A line that is not JSON: its text is the message.
  if type(record["log"]) == "string" and record["message"] == nil then
    out["message"] = record["log"]
    record["log"] = nil
  end
  local time = event_time(record)
  for _, key in ipairs(TIME_FIELDS) do record[key] = nil end

  for key, value in pairs(record) do
    local target = RAY_FIELDS[key]
    if target ~= nil then
      -- An ECS value the line already carries (trace.id from ray-app) wins.
      if record[target] == nil and out[target] == nil then out[target] = value end
    elseif string.find(key, ".", 1, true) or ECS_TOP_LEVEL[key] then
      out[key] = value
    else
      out["ray.extra"] = out["ray.extra"] or {}
      out["ray.extra"][key] = value
    end
  end

  if type(out["log.level"]) == "string" then out["log.level"] = string.lower(out["log.level"]) end
  out["ecs.version"] = out["ecs.version"] or ECS_VERSION
  -- Serve names the application inside a request (ray-app's is "ray-app"); else it is Ray.
  out["service.name"] = out["service.name"] or out["ray.serve.application"] or "ray"
  out["event.dataset"] = out["event.dataset"] or tag
  local path = out["log.file.path"]
  if type(path) == "string" then
    out["kubernetes.pod.uid"] = string.match(path, "/pods/([^/]+)/volumes/")
  end
  out["host.name"] = out["host.name"] or os.getenv("NODE_NAME")

  if time then return 1, time, out end
  return 2, timestamp, out
end
