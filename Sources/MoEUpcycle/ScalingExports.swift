// Scaling laws through the C ABI: presets, prediction, fitting and the planner.

import MoESupport
import MoERuntime
import MoEScaling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle

/// A caller's law (struct_size at least the first version's; bytes beyond this library's struct zero).
func readLaw(_ p: UnsafePointer<moe_scaling_law>?, _ argument: String) throws -> ScalingLaw {
  guard let p else { throw MoEError(.nullPointer, "\(argument) is NULL") }
  let size = UnsafeRawPointer(p).loadUnaligned(as: Int.self)
  try moe_scaling_law.checkSize(size, argument)
  let c = p.pointee
  let form = try coreEnum(c.form, LawForm.self, "\(argument)->form")
  let law = ScalingLaw(form: form, e: c.e, a: c.a, alpha: c.alpha, alpha2: c.alpha2, alpha3: c.alpha3, b: c.b, beta: c.beta)
  try law.validate(argument)
  return law
}

func cLaw(_ law: ScalingLaw) -> moe_scaling_law {
  var c = moe_scaling_law()
  c.form = moe_law_form(rawValue: UInt32(law.form.rawValue))
  c.e = law.e
  c.a = law.a
  c.alpha = law.alpha
  c.alpha2 = law.alpha2
  c.alpha3 = law.alpha3
  c.b = law.b
  c.beta = law.beta
  return c
}

/// The points of `count` entries of the arrays (dense tokens and parameters read where the form uses them).
func readPoints(form: LawForm, tokens: UnsafePointer<Double>?, denseTokens: UnsafePointer<Double>?,
                parameters: UnsafePointer<Double>?, losses: UnsafePointer<Double>?, count: Int) throws -> [ScalingPoint] {
  guard count <= 1 << 20 else { throw MoEError.invalid("count \(count) is too large (at most 1048576 points)") }
  guard count == 0 || tokens != nil else { throw MoEError(.nullPointer, "tokens is NULL") }
  if form.upcycles && count > 0 && denseTokens == nil {
    throw MoEError(.nullPointer, "dense_tokens is NULL, and a \(form.name) law needs D1")
  }
  if form.hasParams && count > 0 && parameters == nil {
    throw MoEError(.nullPointer, "parameters is NULL, and a \(form.name) law needs N")
  }
  return (0..<count).map { i in
    ScalingPoint(tokens: tokens![i], denseTokens: form.upcycles ? denseTokens![i] : 0,
                 params: form.hasParams ? parameters![i] : 0, loss: losses?[i] ?? 0)
  }
}

@c @implementation
public func moe_scaling_law_preset(_ out: UnsafeMutablePointer<moe_scaling_law>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  guarded("moe_scaling_law_preset") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let law = try ScalingLaw.preset(named: try stringArgument(name, "name"))
    try writeResult(cLaw(law), to: out, "out")
  }
}

@c @implementation
public func moe_scaling_law_predict(_ law: UnsafePointer<moe_scaling_law>!, _ tokens: UnsafePointer<Double>!,
                                    _ dense_tokens: UnsafePointer<Double>!, _ parameters: UnsafePointer<Double>!,
                                    _ count: Int, _ losses: UnsafeMutablePointer<Double>!) -> moe_status {
  guarded("moe_scaling_law_predict") {
    let l = try readLaw(law, "law")
    guard count == 0 || losses != nil else { throw MoEError(.nullPointer, "losses is NULL") }
    let points = try readPoints(form: l.form, tokens: tokens, denseTokens: dense_tokens, parameters: parameters,
                                losses: nil, count: count)
    let values = try l.predict(points)
    for (i, v) in values.enumerated() { losses[i] = v }
  }
}

@c @implementation
public func moe_fit_params_init(_ params: UnsafeMutablePointer<moe_fit_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_fit_params_init")
}

@c @implementation
public func moe_scaling_fit(_ law: UnsafeMutablePointer<moe_scaling_law>!, _ low: UnsafeMutablePointer<moe_scaling_law>!,
                            _ high: UnsafeMutablePointer<moe_scaling_law>!, _ tokens: UnsafePointer<Double>!,
                            _ dense_tokens: UnsafePointer<Double>!, _ parameters: UnsafePointer<Double>!,
                            _ losses: UnsafePointer<Double>!, _ count: Int,
                            _ params: UnsafePointer<moe_fit_params>!) -> moe_status {
  guarded("moe_scaling_fit") {
    guard let law else { throw MoEError(.nullPointer, "law is NULL") }
    try checkResult(law, "law")
    if let low { try checkResult(low, "low") }
    if let high { try checkResult(high, "high") }
    let p = try readParameters(params, "params")
    let form = try coreEnum(p.form, LawForm.self, "params->form")
    guard count == 0 || losses != nil else { throw MoEError(.nullPointer, "losses is NULL") }
    if (low != nil || high != nil) && p.bootstrap == 0 {
      throw MoEError.invalid("intervals (low, high) need params->bootstrap > 0 resamples")
    }
    let points = try readPoints(form: form, tokens: tokens, denseTokens: dense_tokens, parameters: parameters,
                                losses: losses, count: count)
    var o = ScalingFitOptions()
    o.huberDelta = p.huber_delta
    o.bootstrap = Int(p.bootstrap)
    o.seed = p.seed
    o.maxIterations = Int(p.max_iterations)
    let fit = try ScalingFitter.fit(points, form: form, options: o)
    try writeResult(cLaw(fit.law), to: law, "law")
    if let low, let l = fit.percentile(0.025) { try writeResult(cLaw(l), to: low, "low") }
    if let high, let h = fit.percentile(0.975) { try writeResult(cLaw(h), to: high, "high") }
  }
}

@c @implementation
public func moe_plan_params_init(_ params: UnsafeMutablePointer<moe_plan_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_plan_params_init")
}

@c @implementation
public func moe_scaling_plan(_ out: UnsafeMutablePointer<moe_plan_result>!, _ params: UnsafePointer<moe_plan_params>!) -> moe_status {
  guarded("moe_scaling_plan") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    guard let params else { throw MoEError(.nullPointer, "params is NULL (the dense model's tokens and parameters are required)") }
    let p = try readParameters(params, "params")
    var file = LawFile(laws: LawSet.liew2025)
    if let path = p.law_file { file = try LawFile(path: try stringArgument(path, "params->law_file")) }
    if p.dense_law != nil || p.moe_law != nil || p.upcycled_law != nil {
      file.bootstrap = []
      if let l = p.dense_law { file.laws.dense = try readLaw(l, "params->dense_law") }
      if let l = p.moe_law { file.laws.moe = try readLaw(l, "params->moe_law") }
      if let l = p.upcycled_law { file.laws.upcycled = try readLaw(l, "params->upcycled_law") }
    }
    var q = PlanQuestion()
    q.denseTokens = p.dense_tokens
    q.budgetTokens = p.budget_tokens
    q.budgetFLOPs = p.budget_flops
    q.denseParams = p.dense_parameters
    q.activeParams = p.active_parameters
    let a = try ScalingPlanner.answer(q, laws: file.laws, bootstrap: file.bootstrap)
    var r = moe_plan_result()
    r.best = a.best.rawValue
    r.bootstrap = UInt32(clamping: a.bootstrap)
    r.upcycled_tokens = a.upcycled.tokens
    r.upcycled_loss = a.upcycled.loss
    r.upcycled_loss_low = a.upcycled.low
    r.upcycled_loss_high = a.upcycled.high
    r.scratch_tokens = a.scratch.tokens
    r.scratch_loss = a.scratch.loss
    r.scratch_loss_low = a.scratch.low
    r.scratch_loss_high = a.scratch.high
    r.scratch_all_tokens = a.scratchAll.tokens
    r.scratch_all_loss = a.scratchAll.loss
    r.scratch_all_loss_low = a.scratchAll.low
    r.scratch_all_loss_high = a.scratchAll.high
    r.dense_tokens = a.dense.tokens
    r.dense_loss = a.dense.loss
    r.dense_loss_low = a.dense.low
    r.dense_loss_high = a.dense.high
    r.break_even_tokens = a.breakEvenTokens
    r.break_even_low = a.breakEvenLow
    r.break_even_high = a.breakEvenHigh
    r.d2_exponent = a.d2Exponent
    try writeResult(r, to: out, "out")
  }
}

@c @implementation
public func moe_study_params_init(_ params: UnsafeMutablePointer<moe_study_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_study_params_init")
}

@c @implementation
public func moe_study_run(_ recipe_path: UnsafePointer<CChar>!, _ out_dir: UnsafePointer<CChar>!,
                          _ params: UnsafePointer<moe_study_params>!) -> moe_status {
  guarded("moe_study_run") {
    let recipePath = try stringArgument(recipe_path, "recipe_path")
    let out = try stringArgument(out_dir, "out_dir")
    let p = try readParameters(params, "params")
    var recipe = try StudyRecipe(path: recipePath)
    if let t = p.tokenizer { recipe.tokenizer = try stringArgument(t, "params->tokenizer") }
    if let d = p.data { recipe.data = [try stringArgument(d, "params->data")] }
    let runtime = try Runtime(threads: Int(p.threads))
    var progress: Study.Progress? = nil
    if let fn = p.progress {
      let user = p.user_data
      progress = { run, step, steps in run.withCString { fn(UInt64(step), UInt64(steps), $0, user) == 0 } }
    }
    _ = try Study(recipe: recipe, out: out, runtime: runtime, progress: progress).run()
  }
}
