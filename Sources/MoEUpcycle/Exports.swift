#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoECore

// MARK: - Version and errors

@c @implementation
public func moe_version_number() -> UInt32 {
  UInt32(MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
}

@c @implementation
public func moe_version_string() -> UnsafePointer<CChar>! {
  staticText("0.1.0")
}

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
    let size = out.pointee.struct_size
    guard size >= MemoryLayout<size_t>.size, size <= 1 << 16 else {
      throw MoEError.invalid("out->struct_size is \(size); set it to sizeof(moe_checkpoint_info)")
    }
    let p = try stringArgument(path, "path")
    let ckpt = try Checkpoint(path: p)
    let d = ckpt.description
    var info = moe_checkpoint_info()
    info.struct_size = MemoryLayout<moe_checkpoint_info>.size
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
    // Copy only as many bytes as the caller's struct holds.
    withUnsafeBytes(of: &info) { src in
      UnsafeMutableRawPointer(out).copyMemory(from: src.baseAddress!, byteCount: min(size, src.count))
    }
    UnsafeMutableRawPointer(out).storeBytes(of: size, as: Int.self)
  }
}

// MARK: - Upcycling

@c @implementation
public func moe_upcycle_params_init(_ params: UnsafeMutablePointer<moe_upcycle_params>!) {
  guard let params else { return }
  let d = UpcycleOptions()
  var p = moe_upcycle_params()
  p.struct_size = MemoryLayout<moe_upcycle_params>.size
  p.num_experts = UInt32(d.numExperts)
  p.top_k = UInt32(d.topK)
  p.method = moe_upcycle_method(rawValue: UInt32(d.method.rawValue))
  p.ratio = d.ratio
  p.shared_indices = 0
  p.noise_std = d.noiseStd
  p.granularity = 0
  p.granular_scaling = MOE_GRANULAR_SCALE_DOWN
  p.partition_select = MOE_PARTITION_RANDOM
  p.partition_disjoint = 0
  p.partition_scale = 1
  p.layers = nil
  p.router_init = MOE_ROUTER_INIT_NORMAL
  p.router_std = d.routerStd
  p.shared_expert = 0
  p.routing = MOE_ROUTING_SOFTMAX_TOPK_RENORM
  p.format = MOE_FORMAT_MIXTRAL
  p.dtype = MOE_OUTPUT_DTYPE_KEEP
  p.seed = 0
  p.force = 0
  p.max_shard_bytes = d.maxShardBytes
  p.threads = 0
  p.router_aux_loss_coef = d.routerAuxLossCoef
  p.progress = nil
  p.user_data = nil
  params.pointee = p
}

/// Translates and range-checks the C parameters.
func upcycleOptions(_ p: moe_upcycle_params) throws -> UpcycleOptions {
  guard p.struct_size == MemoryLayout<moe_upcycle_params>.size else {
    throw MoEError.invalid("params->struct_size is \(p.struct_size), expected \(MemoryLayout<moe_upcycle_params>.size); call moe_upcycle_params_init() first")
  }
  func enumValue<T: RawRepresentable>(_ raw: UInt32, _ type: T.Type, _ name: String) throws -> T where T.RawValue == Int32 {
    guard raw <= UInt32(Int32.max), let v = T(rawValue: Int32(raw)) else { throw MoEError.invalid("params->\(name) has invalid value \(raw)") }
    return v
  }
  var o = UpcycleOptions()
  o.numExperts = Int(p.num_experts)
  o.topK = Int(p.top_k)
  o.method = try enumValue(p.method.rawValue, UpcycleOptions.Method.self, "method")
  o.ratio = p.ratio
  o.sharedIndices = p.shared_indices != 0
  o.noiseStd = p.noise_std
  o.granularity = Int(p.granularity)
  o.granularScaling = try enumValue(p.granular_scaling.rawValue, UpcycleOptions.GranularScaling.self, "granular_scaling")
  o.partitionSelect = try enumValue(p.partition_select.rawValue, UpcycleOptions.PartitionSelect.self, "partition_select")
  o.partitionDisjoint = p.partition_disjoint != 0
  o.partitionScale = p.partition_scale != 0
  if let layers = p.layers {
    guard let s = String(validatingCString: layers) else { throw MoEError.invalid("params->layers is not valid UTF-8") }
    o.layers = s
  }
  o.routerInit = try enumValue(p.router_init.rawValue, UpcycleOptions.RouterInit.self, "router_init")
  o.routerStd = p.router_std
  o.sharedExpert = p.shared_expert != 0
  o.routing = try enumValue(p.routing.rawValue, UpcycleOptions.Routing.self, "routing")
  o.format = try enumValue(p.format.rawValue, UpcycleOptions.Format.self, "format")
  o.dtype = try enumValue(p.dtype.rawValue, UpcycleOptions.OutputDType.self, "dtype")
  o.seed = p.seed
  o.force = p.force != 0
  o.maxShardBytes = p.max_shard_bytes
  o.threads = Int(p.threads)
  o.routerAuxLossCoef = p.router_aux_loss_coef
  guard o.ratio.isFinite else { throw MoEError.invalid("params->ratio is not finite") }
  guard o.routerAuxLossCoef.isFinite && o.routerAuxLossCoef >= 0 else {
    throw MoEError.invalid("params->router_aux_loss_coef must be finite and >= 0")
  }
  return o
}

@c @implementation
public func moe_upcycle(_ out: UnsafeMutablePointer<moe_upcycle_result>!,
                        _ input_path: UnsafePointer<CChar>!,
                        _ output_path: UnsafePointer<CChar>!,
                        _ params: UnsafePointer<moe_upcycle_params>!) -> moe_status {
  guarded("moe_upcycle") {
    if let out {
      guard out.pointee.struct_size == MemoryLayout<moe_upcycle_result>.size else {
        throw MoEError.invalid("out->struct_size is \(out.pointee.struct_size); set it to sizeof(moe_upcycle_result)")
      }
    }
    let input = try stringArgument(input_path, "input_path")
    let output = try stringArgument(output_path, "output_path")
    var cParams = moe_upcycle_params()
    if let params { cParams = params.pointee } else { moe_upcycle_params_init(&cParams) }
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
      out.pointee.bytes_written = report.bytesWritten
      out.pointee.tensors_written = UInt64(report.tensorsWritten)
      out.pointee.shards = UInt32(report.shards)
      out.pointee.moe_layers = UInt32(report.moeLayers)
      out.pointee.seconds = report.seconds
      out.pointee.peak_rss_bytes = report.peakRSS
    }
  }
}
