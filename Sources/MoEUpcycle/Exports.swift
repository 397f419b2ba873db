import MoESupport
import MoEFormats
import MoELayer
import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle

// MARK: - Version and errors

@c @implementation
public func moe_version_number() -> UInt32 {
  UInt32(MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
}

@c @implementation
public func moe_version_string() -> UnsafePointer<CChar>! {
  versionText
}

/// MOE_VERSION_STRING as static C text (made once, never freed).
nonisolated(unsafe) private let versionText = UnsafePointer(strdup(MOE_VERSION_STRING)!)

@c @implementation
public func moe_status_string(_ code: moe_status) -> UnsafePointer<CChar>! {
  switch code {
  case MOE_OK: return staticText("ok")
  case MOE_ERR_INVALID_ARGUMENT: return staticText("invalid argument")
  case MOE_ERR_NULL_POINTER: return staticText("null pointer")
  case MOE_ERR_IO: return staticText("i/o error")
  case MOE_ERR_FORMAT: return staticText("malformed file")
  case MOE_ERR_UNSUPPORTED: return staticText("unsupported")
  case MOE_ERR_EXISTS: return staticText("output exists")
  case MOE_ERR_NOT_FOUND: return staticText("not found")
  case MOE_ERR_SHAPE: return staticText("shape mismatch")
  case MOE_ERR_OUT_OF_MEMORY: return staticText("out of memory")
  case MOE_ERR_CANCELLED: return staticText("cancelled")
  case MOE_ERR_BUFFER_TOO_SMALL: return staticText("buffer too small")
  case MOE_ERR_INTERNAL: return staticText("internal error")
  case MOE_ERR_NUMERIC: return staticText("non-finite number")
  default: return staticText("unknown status")
  }
}

@c @implementation
public func moe_last_error() -> UnsafePointer<CChar>! {
  LastError.get()
}

// MARK: - Checkpoint inspection

@c @implementation
public func moe_checkpoint_inspect(_ out: UnsafeMutablePointer<moe_checkpoint_info>!,
                                   _ path: UnsafePointer<CChar>!) -> moe_status {
  guarded("moe_checkpoint_inspect") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let ckpt = try Checkpoint(path: try stringArgument(path, "path"))
    let d = ckpt.description
    var info = moe_checkpoint_info()
    copyText(d.architecture.rawValue, into: &info.architecture)
    copyText(ckpt.container.rawValue, into: &info.container)
    let (dominant, summary) = ckpt.dtypeSummary()
    copyText(dominant.name, into: &info.dtype)
    copyText(summary, into: &info.dtype_summary)
    info.num_layers = UInt32(d.numLayers)
    info.hidden_size = UInt32(d.hiddenSize)
    info.intermediate_size = UInt32(d.intermediateSize)
    info.num_heads = UInt32(d.numHeads)
    info.num_kv_heads = UInt32(d.numKVHeads)
    info.head_dim = UInt32(d.headDim)
    info.vocab_size = UInt32(d.vocabSize)
    info.max_position_embeddings = UInt32(clamping: d.maxPositionEmbeddings)
    info.rope_theta = d.ropeTheta
    info.rms_norm_eps = d.rmsNormEps
    info.tied_embeddings = d.tiedEmbeddings ? 1 : 0
    info.qkv_bias = d.qkvBias ? 1 : 0
    if let moe = d.moe {
      info.num_experts = UInt32(moe.numExperts)
      info.top_k = UInt32(moe.topK)
      info.moe_intermediate_size = UInt32(moe.expertIntermediateSize)
      info.shared_expert_intermediate_size = UInt32(moe.sharedExpertIntermediateSize)
      info.num_moe_layers = UInt32(moe.moeLayers.filter { $0 }.count)
    }
    info.tensor_count = UInt64(ckpt.source.tensorNames.count)
    let (total, active) = ckpt.parameterCounts()
    info.param_count = UInt64(total)
    info.active_param_count = UInt64(active)
    info.data_bytes = UInt64(ckpt.dataBytes)
    try writeResult(info, to: out, "out")
  }
}

// MARK: - Upcycling

@c @implementation
public func moe_upcycle_params_init(_ params: UnsafeMutablePointer<moe_upcycle_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_upcycle_params_init")
}

/// Translates and range-checks the C parameters.
/// params->routing as a routing a checkpoint can hold.
func checkpointRouting(_ value: moe_routing) throws -> UpcycleOptions.Routing {
  let mode = try coreEnum(value, RoutingMode.self, "params->routing")
  guard let routing = UpcycleOptions.Routing(rawValue: mode.rawValue) else {
    throw MoEError.unsupported("params->routing \(mode.caseName) is for MoE layers only; checkpoints hold "
                               + "softmax-topk-renorm, softmax-topk or topk-softmax")
  }
  return routing
}

func upcycleOptions(_ p: moe_upcycle_params) throws -> UpcycleOptions {
  var o = UpcycleOptions()
  o.numExperts = Int(p.num_experts)
  o.topK = Int(p.top_k)
  o.method = try coreEnum(p.method, UpcycleOptions.Method.self, "params->method")
  o.ratio = p.ratio
  o.sharedIndices = p.shared_indices != 0
  o.noiseStd = p.noise_std
  o.granularity = Int(p.granularity)
  o.granularScaling = try coreEnum(p.granular_scaling, UpcycleOptions.GranularScaling.self, "params->granular_scaling")
  o.partitionSelect = try coreEnum(p.partition_select, UpcycleOptions.PartitionSelect.self, "params->partition_select")
  o.partitionDisjoint = p.partition_disjoint != 0
  o.partitionScale = p.partition_scale != 0
  if let layers = p.layers {
    guard let s = String(validatingCString: layers) else { throw MoEError.invalid("params->layers is not valid UTF-8") }
    o.layers = s
  }
  o.routerInit = try coreEnum(p.router_init, UpcycleOptions.RouterInit.self, "params->router_init")
  o.routerStd = p.router_std
  o.sharedExpert = p.shared_expert != 0
  o.routing = try checkpointRouting(p.routing)
  o.format = try coreEnum(p.format, UpcycleOptions.Format.self, "params->format")
  guard let dtypeName = Names.dtype.text(of: p.dtype.rawValue).map({ String(cString: $0) }) else {
    throw MoEError.invalid("params->dtype has invalid value \(p.dtype.rawValue)")
  }
  guard let dtype = UpcycleOptions.OutputDType(rawValue: p.dtype.rawValue) else {
    throw MoEError.unsupported("params->dtype \(dtypeName) is not an output dtype; use default (keep the source's), "
                               + "f32, bf16 or f16")
  }
  o.dtype = dtype
  o.seed = p.seed
  o.force = p.force != 0
  o.maxShardBytes = p.max_shard_bytes
  o.threads = Int(p.threads)
  o.routerAuxLossCoef = p.aux_loss_coef
  func path(_ value: UnsafePointer<CChar>?, _ name: String) throws -> String? {
    guard let value else { return nil }
    guard let s = String(validatingCString: value), !s.isEmpty else {
      throw MoEError.invalid("params->\(name) is empty or not valid UTF-8")
    }
    return s
  }
  if let calibration = try path(p.calibration_path, "calibration_path") {
    var c = CalibrationOptions(path: calibration)
    c.ids = p.calibration_ids != 0
    guard p.calibration_tokens <= UInt64(Int32.max) else {
      throw MoEError.invalid("params->calibration_tokens is \(p.calibration_tokens); at most \(Int32.max)")
    }
    c.maxTokens = Int(p.calibration_tokens)
    c.sampleRows = Int(p.calibration_samples)
    c.fireQuantile = p.fire_quantile
    guard c.fireQuantile.isFinite else { throw MoEError.invalid("params->fire_quantile is not finite") }
    o.calibration = c
  }
  o.statisticsPath = try path(p.stats_path, "stats_path")
  o.saveStatisticsPath = try path(p.save_stats_path, "save_stats_path")
  o.importance = try coreEnum(p.importance, UpcycleOptions.Importance.self, "params->importance")
  o.sharedFromFrequent = Int(p.shared_from_frequent)
  o.dropSelect = try coreEnum(p.drop_select, UpcycleOptions.DropSelect.self, "params->drop_select")
  o.routerPromptsPath = try path(p.router_prompts_path, "router_prompts_path")
  o.routerNegativePromptsPath = try path(p.router_negative_prompts_path, "router_negative_prompts_path")
  o.routerSpread = p.router_spread
  o.calibratedScale = p.calibrated_scale != 0
  guard o.ratio.isFinite else { throw MoEError.invalid("params->ratio is not finite") }
  guard o.routerAuxLossCoef.isFinite && o.routerAuxLossCoef >= 0 else {
    throw MoEError.invalid("params->aux_loss_coef must be finite and >= 0")
  }
  return o
}

@c @implementation
public func moe_upcycle(_ out: UnsafeMutablePointer<moe_upcycle_result>!,
                        _ input_path: UnsafePointer<CChar>!,
                        _ output_path: UnsafePointer<CChar>!,
                        _ params: UnsafePointer<moe_upcycle_params>!) -> moe_status {
  guarded("moe_upcycle") {
    if let out { try checkResult(out, "out") }
    let input = try stringArgument(input_path, "input_path")
    let output = try stringArgument(output_path, "output_path")
    let cParams = try readParameters(params, "params")
    let options = try upcycleOptions(cParams)
    let checkpoint = try Checkpoint(path: input)
    let upcycler = try Upcycler(checkpoint: checkpoint, options: options)
    var progress: Upcycler.Progress? = nil
    if let fn = cParams.progress {
      let user = cParams.user_data
      progress = { done, total, stage in
        stage.withCString { fn(done, total, $0, user) == 0 }
      }
    }
    let report = try upcycler.write(to: output, progress: progress)
    if let out {
      var r = moe_upcycle_result()
      r.bytes_written = report.bytesWritten
      r.tensors_written = UInt64(report.tensorsWritten)
      r.shards = UInt32(report.shards)
      r.moe_layers = UInt32(report.moeLayers)
      r.seconds = report.seconds
      r.peak_rss_bytes = report.peakRSS
      r.stale_bytes_removed = report.staleTemporaries.bytes
      r.stale_removed = UInt32(clamping: report.staleTemporaries.count)
      r.router_max_similarity = report.routerMaxSimilarity
      r.router_similar_layer = Int32(clamping: report.routerSimilarLayer)
      try writeResult(r, to: out, "out")
    }
  }
}

@c @implementation
public func moe_calibrate(_ input_path: UnsafePointer<CChar>!, _ stats_path: UnsafePointer<CChar>!,
                          _ params: UnsafePointer<moe_upcycle_params>!) -> moe_status {
  guarded("moe_calibrate") {
    let input = try stringArgument(input_path, "input_path")
    let output = try stringArgument(stats_path, "stats_path")
    let options = try upcycleOptions(try readParameters(params, "params"))
    guard let calibration = options.calibration else {
      throw MoEError.invalid("params->calibration_path is NULL; calibration needs data (text, or token ids with calibration_ids)")
    }
    let checkpoint = try Checkpoint(path: input)
    try CalibrationStatistics(collecting: checkpoint, options: calibration).save(to: output, force: options.force)
  }
}

// MARK: - GGUF export

@c @implementation
public func moe_export_params_init(_ params: UnsafeMutablePointer<moe_export_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_export_params_init")
}

@c @implementation
public func moe_export(_ out: UnsafeMutablePointer<moe_export_result>!, _ input_path: UnsafePointer<CChar>!,
                       _ output_path: UnsafePointer<CChar>!, _ params: UnsafePointer<moe_export_params>!) -> moe_status {
  guarded("moe_export") {
    if let out { try checkResult(out, "out") }
    let input = try stringArgument(input_path, "input_path")
    let output = try stringArgument(output_path, "output_path")
    let p = try readParameters(params, "params")
    var o = GGUFExportOptions()
    guard let type = DType(rawValue: p.dtype.rawValue) else {
      throw MoEError.invalid("params->dtype has invalid value \(p.dtype.rawValue); use f32, f16, bf16, q8_0, q4_0 or q4_1")
    }
    o.type = type
    o.force = p.force != 0
    let report = try GGUFExport.write(try Checkpoint(path: input), to: output, options: o)
    if let out {
      var r = moe_export_result()
      r.bytes_written = report.bytesWritten
      r.tensors_written = UInt64(report.tensorsWritten)
      r.fallback_tensors = UInt32(clamping: report.fallbackTensors)
      r.seconds = report.seconds
      try writeResult(r, to: out, "out")
    }
  }
}

// MARK: - Models from scratch

@c @implementation
public func moe_init_params_init(_ params: UnsafeMutablePointer<moe_init_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_init_params_init")
}

/// Translates and validates C init parameters (the shape is checked by ModelInit).
func initOptions(_ p: moe_init_params) throws -> ModelInitOptions {
  var o = ModelInitOptions()
  o.hiddenSize = Int(p.hidden_size)
  o.numLayers = Int(p.num_layers)
  o.numHeads = Int(p.num_heads)
  o.numKVHeads = Int(p.num_kv_heads)
  o.headDim = Int(p.head_dim)
  o.intermediateSize = Int(p.intermediate_size)
  o.numExperts = Int(p.num_experts)
  o.topK = Int(p.top_k)
  o.format = try coreEnum(p.format, UpcycleOptions.Format.self, "params->format")
  o.sharedExpertSize = Int(p.shared_expert_size)
  o.maxPositions = Int(p.max_positions)
  o.tiedEmbeddings = p.tie_embeddings != 0
  o.ropeTheta = p.rope_theta
  o.rmsNormEps = p.rms_norm_eps
  o.initStd = p.init_std
  o.routing = try checkpointRouting(p.routing)
  o.routerAuxLossCoef = p.aux_loss_coef
  switch p.dtype.rawValue {
  case MOE_DTYPE_DEFAULT.rawValue, MOE_DTYPE_F32.rawValue: o.dtype = .f32
  case MOE_DTYPE_BF16.rawValue: o.dtype = .bf16
  default:
    let name = Names.dtype.text(of: p.dtype.rawValue).map { String(cString: $0) } ?? "value \(p.dtype.rawValue)"
    throw MoEError.unsupported("params->dtype \(name) is not supported for a new model; use f32 or bf16")
  }
  o.seed = p.seed
  o.force = p.force != 0
  o.maxShardBytes = p.max_shard_bytes
  return o
}

@c @implementation
public func moe_init_model(_ out: UnsafeMutablePointer<moe_init_result>!,
                           _ tokenizer_source: UnsafePointer<CChar>!,
                           _ output_path: UnsafePointer<CChar>!,
                           _ params: UnsafePointer<moe_init_params>!) -> moe_status {
  guarded("moe_init_model") {
    if let out { try checkResult(out, "out") }
    let source = try stringArgument(tokenizer_source, "tokenizer_source")
    let output = try stringArgument(output_path, "output_path")
    let options = try initOptions(try readParameters(params, "params"))
    let report = try ModelInit.write(to: output, tokenizerSource: source, options: options)
    if let out {
      var r = moe_init_result()
      r.parameters = UInt64(report.parameters)
      r.active_parameters = UInt64(report.activeParameters)
      r.bytes_written = report.bytesWritten
      r.shards = UInt32(clamping: report.shards)
      r.seconds = report.seconds
      try writeResult(r, to: out, "out")
    }
  }
}
