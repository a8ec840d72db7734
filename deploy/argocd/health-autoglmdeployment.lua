-- Argo CD health check for autoglm.io/AutoGLMDeployment (see docs/gitops.md).
-- Reads only what the operator writes: status.observedGeneration and status.conditions
-- (Ready, Progressing, Degraded, MemoryFit, shaped like metav1.Condition).
--   Progressing: the operator has not seen this generation yet, or the model is still rolling out;
--   Degraded:    Degraded=True (e.g. an invalid spec) or MemoryFit=False (the model fits no GPU:
--                the operator creates no pods that would run out of memory);
--   Healthy:     Ready=True for the current generation.
-- An autoscaler that cannot scale (Autoscaling=False: no metrics adapter, KEDA not installed) is not
-- an outage: the status stays as above, and the message says so, with the condition's fix.
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function described(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile this AutoGLMDeployment"
  return hs
end
if obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. generation
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = described(degraded, "Degraded")
  return hs
end
local fit = condition("MemoryFit")
if fit ~= nil and fit.status == "False" then
  hs.status = "Degraded"
  hs.message = described(fit, "The model does not fit the GPU memory")
  return hs
end

local scaling = condition("Autoscaling")
local function with_autoscaling(message)
  if scaling ~= nil and scaling.status == "False" then
    return message .. "; autoscaler inactive (" .. (scaling.reason or "") .. "): " .. (scaling.message or "")
  end
  return message
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = with_autoscaling(described(ready, "Ready"))
  return hs
end

local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "False" and ready ~= nil and ready.status == "False" then
  -- Not ready and no longer trying (e.g. the rollout exceeded its progress deadline).
  hs.status = "Degraded"
  hs.message = described(ready, "Not ready")
  return hs
end
hs.status = "Progressing"
hs.message = with_autoscaling(described(progressing, described(ready, "Waiting for the model to be ready")))
return hs
