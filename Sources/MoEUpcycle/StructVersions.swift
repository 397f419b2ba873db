import MoESupport
import MoEFormats
import MoELayer
import MoEModel
import MoEUpcycling
import MoEScaling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle

// Every versioned struct of the header: where its first version ends (the
// offset of the first field appended later, or its sizeof when nothing was
// appended yet) and, for parameter structs, the defaults its `_init` writes.
// Appending a field to a struct means: add it in the header at or after the
// previous version's sizeof, note the version there, and record here where
// the first version ends if this is its first appended field.

extension moe_checkpoint_info: VersionedStruct {
  static let cName = "moe_checkpoint_info"
  static var firstVersionSize: Int { ownSize }
}

extension moe_upcycle_params: ParameterStruct {
  static let cName = "moe_upcycle_params"
  /// 0.7.0 appended the calibration and data-derived router fields.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.calibration_path)! }
  static var defaults: moe_upcycle_params {
    let d = UpcycleOptions()
    var p = moe_upcycle_params()
    p.struct_size = ownSize
    p.num_experts = UInt32(d.numExperts)
    p.top_k = UInt32(d.topK)
    p.method = moe_method(rawValue: UInt32(d.method.rawValue))
    p.ratio = d.ratio
    p.shared_indices = d.sharedIndices ? 1 : 0
    p.noise_std = d.noiseStd
    p.granularity = UInt32(d.granularity)
    p.granular_scaling = moe_granular_scaling(rawValue: UInt32(d.granularScaling.rawValue))
    p.partition_select = moe_partition_select(rawValue: UInt32(d.partitionSelect.rawValue))
    p.partition_disjoint = d.partitionDisjoint ? 1 : 0
    p.partition_scale = d.partitionScale ? 1 : 0
    p.layers = nil
    p.router_init = moe_router_init(rawValue: UInt32(d.routerInit.rawValue))
    p.router_std = d.routerStd
    p.shared_expert = d.sharedExpert ? 1 : 0
    p.routing = moe_routing(rawValue: UInt32(d.routing.rawValue))
    p.format = moe_format(rawValue: UInt32(d.format.rawValue))
    p.dtype = moe_dtype(rawValue: d.dtype.rawValue)
    p.seed = d.seed
    p.force = d.force ? 1 : 0
    p.max_shard_bytes = d.maxShardBytes
    p.threads = UInt32(d.threads)
    p.aux_loss_coef = d.routerAuxLossCoef
    p.progress = nil
    p.user_data = nil
    let c = CalibrationOptions(path: "")
    p.calibration_path = nil
    p.calibration_ids = 0
    p.calibration_tokens = UInt64(c.maxTokens)
    p.calibration_samples = UInt32(c.sampleRows)
    p.fire_quantile = c.fireQuantile
    p.stats_path = nil
    p.save_stats_path = nil
    p.importance = moe_importance(rawValue: UInt32(d.importance.rawValue))
    p.shared_from_frequent = UInt32(d.sharedFromFrequent)
    p.drop_select = moe_drop_select(rawValue: UInt32(d.dropSelect.rawValue))
    p.router_prompts_path = nil
    p.router_negative_prompts_path = nil
    p.router_spread = d.routerSpread
    p.calibrated_scale = d.calibratedScale ? 1 : 0
    return p
  }
}

extension moe_upcycle_result: VersionedStruct {
  static let cName = "moe_upcycle_result"
  /// 0.2.0 appended stale_bytes_removed and stale_removed.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.stale_bytes_removed)! }
}

extension moe_runtime_params: ParameterStruct {
  static let cName = "moe_runtime_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_runtime_params {
    var p = moe_runtime_params()
    p.struct_size = ownSize
    p.threads = 0
    p.pin = 1
    p.placement = MOE_PLACEMENT_DEFAULT
    p.topology_synthetic = nil
    p.topology_xml = nil
    return p
  }
}

extension moe_runtime_info: VersionedStruct {
  static let cName = "moe_runtime_info"
  /// 0.3.0 appended kernel_path, kernel_forced and kernel_vector_floats, 0.5.0 kernel_bf16.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.kernel_path)! }
}

extension moe_layer_config: ParameterStruct {
  static let cName = "moe_layer_config"
  /// 0.5.0 appended compute.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.compute)! }
  static var defaults: moe_layer_config {
    let d = MoELayerConfig(hidden: 0, ffn: 0, experts: 0, topK: 0)
    var c = moe_layer_config()
    c.struct_size = ownSize
    c.routing = moe_routing(rawValue: UInt32(d.routing.rawValue))
    c.capacity_factor = d.capacityFactor
    c.expert_choice = d.expertChoice ? 1 : 0
    c.shared_expert_intermediate_size = UInt32(d.sharedFFN)
    c.storage = MOE_DTYPE_F32
    c.placement = MOE_PLACEMENT_DEFAULT
    c.jitter = d.jitter
    c.seed = d.seed
    c.aux_loss_coef = d.balanceCoef
    c.z_loss_coef = d.zCoef
    c.compute = MOE_DTYPE_F32
    return c
  }
}

extension moe_layer_stats: VersionedStruct {
  static let cName = "moe_layer_stats"
  static var firstVersionSize: Int { ownSize }
}

extension moe_model_params: ParameterStruct {
  static let cName = "moe_model_params"
  /// 0.6.0 appended upcycle.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.upcycle)! }
  static var defaults: moe_model_params {
    var p = moe_model_params()
    p.struct_size = ownSize
    p.weight_dtype = MOE_DTYPE_DEFAULT
    p.placement = MOE_PLACEMENT_DEFAULT
    p.max_context = 0
    p.upcycle = nil
    return p
  }
}

extension moe_model_info: VersionedStruct {
  static let cName = "moe_model_info"
  static var firstVersionSize: Int { ownSize }
}

extension moe_eval_params: ParameterStruct {
  static let cName = "moe_eval_params"
  /// 0.8.0 appended held_out.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.held_out)! }
  static var defaults: moe_eval_params {
    let d = EvalOptions()
    var p = moe_eval_params()
    p.struct_size = ownSize
    p.seq_len = UInt32(d.seqLen)
    p.max_tokens = UInt64(d.maxTokens)
    p.progress = nil
    p.user_data = nil
    p.held_out = d.heldOut
    return p
  }
}

extension moe_eval_result: VersionedStruct {
  static let cName = "moe_eval_result"
  static var firstVersionSize: Int { ownSize }
}

extension moe_generate_params: ParameterStruct {
  static let cName = "moe_generate_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_generate_params {
    let d = GenerateOptions()
    var p = moe_generate_params()
    p.struct_size = ownSize
    p.max_new_tokens = UInt32(d.maxNewTokens)
    p.temperature = d.temperature
    p.top_k = UInt32(d.topK)
    p.top_p = d.topP
    p.seed = d.seed
    p.chat = d.chat ? 1 : 0
    p.add_special = d.addSpecial ? 1 : 0
    p.on_token = nil
    p.user_data = nil
    p.ignore_eos = d.stopAtEndOfSequence ? 0 : 1
    return p
  }
}

extension moe_generate_result: VersionedStruct {
  static let cName = "moe_generate_result"
  static var firstVersionSize: Int { ownSize }
}

extension moe_trainer_params: ParameterStruct {
  static let cName = "moe_trainer_params"
  /// 0.2.0 appended on_nonfinite; 0.4.0 micro_batch and recompute; 0.5.0 precision.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.on_nonfinite)! }
  static var defaults: moe_trainer_params {
    let d = TrainerOptions()
    var p = moe_trainer_params()
    p.struct_size = ownSize
    p.seq_len = UInt32(d.seqLen)
    p.batch = UInt32(d.batch)
    p.steps = UInt32(d.steps)
    p.warmup = UInt32(d.warmup)
    p.lr = d.lr
    p.min_lr = d.minLR
    p.schedule = moe_lr_schedule(rawValue: UInt32(d.schedule.rawValue))
    p.beta1 = d.beta1
    p.beta2 = d.beta2
    p.eps = d.eps
    p.weight_decay = d.weightDecay
    p.clip = d.clip
    p.aux_loss_coef = d.balanceCoef
    p.z_loss_coef = d.zCoef
    p.train_only = moe_train_only(rawValue: UInt32(d.trainOnly.rawValue))
    p.seed = d.seed
    p.eval_fraction = d.evalFraction
    p.eval_windows = UInt32(d.evalWindows)
    p.reserved0 = 0
    p.on_nonfinite = MOE_NONFINITE_ERROR
    p.micro_batch = UInt32(d.microBatch)
    p.recompute = d.recompute ? 1 : 0
    p.precision = MOE_DTYPE_F32
    return p
  }
}

extension moe_train_stats: VersionedStruct {
  static let cName = "moe_train_stats"
  /// 0.2.0 appended skipped, 0.4.0 model_flops and activation_bytes.
  static var firstVersionSize: Int { MemoryLayout<Self>.offset(of: \.skipped)! }
}

/// A C enum value as the core enum with the same raw value, or an error naming the field.
func coreEnum<C: RawRepresentable, E: RawRepresentable>(_ value: C, _ type: E.Type, _ field: String) throws -> E
where C.RawValue: FixedWidthInteger, E.RawValue == Int32 {
  // C enums without negative values arrive as UInt32: read the bits as the C int they are.
  let raw = Int32(truncatingIfNeeded: value.rawValue)
  guard let e = E(rawValue: raw) else { throw MoEError.invalid("\(field) has invalid value \(raw)") }
  return e
}

extension moe_init_params: ParameterStruct {
  static let cName = "moe_init_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_init_params {
    let d = ModelInitOptions()
    var p = moe_init_params()
    p.struct_size = ownSize
    p.hidden_size = UInt32(d.hiddenSize)
    p.num_layers = UInt32(d.numLayers)
    p.num_heads = UInt32(d.numHeads)
    p.num_kv_heads = UInt32(d.numKVHeads)
    p.head_dim = UInt32(d.headDim)
    p.intermediate_size = UInt32(d.intermediateSize)
    p.num_experts = UInt32(d.numExperts)
    p.top_k = UInt32(d.topK)
    p.format = moe_format(rawValue: UInt32(d.format.rawValue))
    p.shared_expert_size = UInt32(d.sharedExpertSize)
    p.max_positions = UInt32(d.maxPositions)
    p.tie_embeddings = d.tiedEmbeddings ? 1 : 0
    p.rope_theta = d.ropeTheta
    p.rms_norm_eps = d.rmsNormEps
    p.init_std = d.initStd
    p.routing = moe_routing(rawValue: UInt32(d.routing.rawValue))
    p.aux_loss_coef = d.routerAuxLossCoef
    p.dtype = MOE_DTYPE_DEFAULT
    p.seed = d.seed
    p.force = d.force ? 1 : 0
    p.max_shard_bytes = d.maxShardBytes
    return p
  }
}

extension moe_export_params: ParameterStruct {
  static let cName = "moe_export_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_export_params {
    let d = GGUFExportOptions()
    var p = moe_export_params()
    p.struct_size = ownSize
    p.dtype = moe_dtype(rawValue: d.type.rawValue)
    p.force = d.force ? 1 : 0
    return p
  }
}

extension moe_export_result: VersionedStruct {
  static let cName = "moe_export_result"
  static var firstVersionSize: Int { ownSize }
}

extension moe_init_result: VersionedStruct {
  static let cName = "moe_init_result"
  static var firstVersionSize: Int { ownSize }
}

extension moe_scaling_law: VersionedStruct {
  static let cName = "moe_scaling_law"
  static var firstVersionSize: Int { ownSize }
}

extension moe_fit_params: ParameterStruct {
  static let cName = "moe_fit_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_fit_params {
    let d = ScalingFitOptions()
    var p = moe_fit_params()
    p.struct_size = ownSize
    p.form = MOE_LAW_DATA
    p.huber_delta = d.huberDelta
    p.bootstrap = UInt32(d.bootstrap)
    p.seed = d.seed
    p.max_iterations = UInt32(d.maxIterations)
    return p
  }
}

extension moe_plan_params: ParameterStruct {
  static let cName = "moe_plan_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_plan_params {
    var p = moe_plan_params()
    p.struct_size = ownSize
    return p
  }
}

extension moe_plan_result: VersionedStruct {
  static let cName = "moe_plan_result"
  static var firstVersionSize: Int { ownSize }
}

extension moe_study_params: ParameterStruct {
  static let cName = "moe_study_params"
  static var firstVersionSize: Int { ownSize }
  static var defaults: moe_study_params {
    var p = moe_study_params()
    p.struct_size = ownSize
    return p
  }
}
