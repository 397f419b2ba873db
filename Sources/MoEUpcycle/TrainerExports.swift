import MoESupport
import MoEModel
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoEFormats
import MoEKernelCode

@c @implementation
public func moe_trainer_params_init(_ params: UnsafeMutablePointer<moe_trainer_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_trainer_params_init")
}

func trainerOptions(_ params: UnsafePointer<moe_trainer_params>?) throws -> TrainerOptions {
  let p = try readParameters(params, "params")
  var o = TrainerOptions()
  o.seqLen = Int(p.seq_len)
  o.batch = Int(p.batch)
  o.steps = Int(p.steps)
  o.warmup = Int(p.warmup)
  o.lr = p.lr
  o.minLR = p.min_lr
  o.schedule = try coreEnum(p.schedule, LRSchedule.self, "params->schedule")
  o.beta1 = p.beta1
  o.beta2 = p.beta2
  o.eps = p.eps
  o.weightDecay = p.weight_decay
  o.clip = p.clip
  o.balanceCoef = p.aux_loss_coef
  o.zCoef = p.z_loss_coef
  o.trainOnly = try coreEnum(p.train_only, TrainOnly.self, "params->train_only")
  o.seed = p.seed
  o.evalFraction = p.eval_fraction
  o.evalWindows = Int(p.eval_windows)
  o.onNonFinite = try coreEnum(p.on_nonfinite, NonFinitePolicy.self, "params->on_nonfinite")
  o.microBatch = Int(p.micro_batch)
  o.recompute = p.recompute != 0
  switch p.precision {
  case MOE_DTYPE_F32: o.precision = .f32
  case MOE_DTYPE_BF16: o.precision = .bf16
  default:
    throw MoEError.unsupported("params->precision is \(moe_dtype_name(p.precision).map { String(cString: $0) } ?? "?"); training computes in f32 or bf16")
  }
  return o
}

@c @implementation
public func moe_trainer_create(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ model: OpaquePointer?,
                               _ tokens: UnsafePointer<Int32>!, _ count: Int,
                               _ params: UnsafePointer<moe_trainer_params>!) -> moe_status {
  guarded("moe_trainer_create") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let m = try handleObject(model, DecoderModel.self, "model")
    let ids = try tokenArgument(tokens, count, vocab: m.vocabSize)
    out.pointee = retainedHandle(try Trainer(model: m, tokens: ids, options: try trainerOptions(params)))
  }
}

@c @implementation
public func moe_trainer_create_text(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ model: OpaquePointer?,
                                    _ text: UnsafePointer<CChar>!, _ length: Int,
                                    _ params: UnsafePointer<moe_trainer_params>!) -> moe_status {
  guarded("moe_trainer_create_text") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let m = try handleObject(model, DecoderModel.self, "model")
    let ids = try m.requireTokenizer().encode(try utf8Argument(text, length, "text"), addSpecial: false, parseSpecial: false)
    out.pointee = retainedHandle(try Trainer(model: m, tokens: ids, options: try trainerOptions(params)))
  }
}

@c @implementation
public func moe_trainer_free(_ trainer: OpaquePointer?) {
  releaseHandle(trainer, Trainer.self)
}

@c @implementation
public func moe_trainer_step(_ out: UnsafeMutablePointer<moe_train_stats>!, _ trainer: OpaquePointer?) -> moe_status {
  guarded("moe_trainer_step") {
    if let out { try checkResult(out, "out") }
    let t = try handleObject(trainer, Trainer.self, "trainer")
    let s = try t.trainStep()
    guard let out else { return }
    var r = moe_train_stats()
    r.step = UInt64(s.step)
    r.loss = s.loss
    r.aux_loss = s.balance
    r.z_loss = s.zLoss
    r.lr = Double(s.lr)
    r.grad_norm = s.gradNorm
    r.tokens = UInt64(s.tokens)
    r.seconds = s.seconds
    r.tokens_per_second = s.seconds > 0 ? Double(s.tokens) / s.seconds : 0
    r.max_expert_load = s.maxExpertLoad
    r.skipped = s.skipped ? 1 : 0
    r.model_flops = s.modelFLOPs
    r.activation_bytes = UInt64(s.activationBytes)
    try writeResult(r, to: out, "out")
  }
}

@c @implementation
public func moe_trainer_eval(_ mean_nll: UnsafeMutablePointer<Double>!, _ trainer: OpaquePointer?) -> moe_status {
  guarded("moe_trainer_eval") {
    guard let mean_nll else { throw MoEError(.nullPointer, "mean_nll is NULL") }
    mean_nll.pointee = try handleObject(trainer, Trainer.self, "trainer").evaluateHeldOut()
  }
}

@c @implementation
public func moe_trainer_get_step(_ out: UnsafeMutablePointer<UInt64>!, _ trainer: OpaquePointer?) -> moe_status {
  guarded("moe_trainer_get_step") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = UInt64(try handleObject(trainer, Trainer.self, "trainer").step)
  }
}

@c @implementation
public func moe_trainer_save(_ trainer: OpaquePointer?, _ path: UnsafePointer<CChar>!, _ force: Int32) -> moe_status {
  guarded("moe_trainer_save") {
    let t = try handleObject(trainer, Trainer.self, "trainer")
    let p = try stringArgument(path, "path")
    try t.model.save(to: p, dtype: .f32, force: force != 0, extraFiles: t.stateFiles())
  }
}

@c @implementation
public func moe_trainer_resume(_ trainer: OpaquePointer?, _ path: UnsafePointer<CChar>!) -> moe_status {
  guarded("moe_trainer_resume") {
    let t = try handleObject(trainer, Trainer.self, "trainer")
    try t.restore(from: try stringArgument(path, "path"))
  }
}
