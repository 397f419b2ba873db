import MoESupport
import MoERuntime
import MoEModel
import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoEFormats

// MARK: - Model lifecycle

@c @implementation
public func moe_model_params_init(_ params: UnsafeMutablePointer<moe_model_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_model_params_init")
}

@c @implementation
public func moe_model_load(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ runtime: OpaquePointer?,
                           _ path: UnsafePointer<CChar>!, _ params: UnsafePointer<moe_model_params>!) -> moe_status {
  guarded("moe_model_load") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    let p = try stringArgument(path, "path")
    let c = try readParameters(params, "params")
    var options = ModelLoadOptions()
    switch c.weight_dtype {
    case MOE_DTYPE_DEFAULT: options.weightDType = nil
    case MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_1:
      options.weightDType = DType(rawValue: c.weight_dtype.rawValue)
    default:
      let name = Names.dtype.text(of: c.weight_dtype.rawValue).map { String(cString: $0) } ?? "\(c.weight_dtype.rawValue)"
      throw MoEError.invalid("params->weight_dtype is \(name); loaded weights are stored as default (the "
                             + "checkpoint's choice), f32, bf16, q8_0, q4_0 or q4_1")
    }
    options.placement = try placementArgument(c.placement, "params->placement")
    options.maxContext = Int(c.max_context)
    let upcycle = try c.upcycle.map { try upcycleOptions(try readParameters($0, "params->upcycle")) }
    out.pointee = retainedHandle(try DecoderModel(path: p, runtime: rt, options: options, upcycle: upcycle))
  }
}

@c @implementation
public func moe_model_free(_ model: OpaquePointer?) {
  releaseHandle(model, DecoderModel.self)
}

@c @implementation
public func moe_model_get_info(_ out: UnsafeMutablePointer<moe_model_info>!, _ model: OpaquePointer?) -> moe_status {
  guarded("moe_model_get_info") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let m = try handleObject(model, DecoderModel.self, "model")
    let d = m.description
    var info = moe_model_info()
    copyText(d.architecture.rawValue, into: &info.architecture)
    info.num_layers = UInt32(d.numLayers)
    info.hidden_size = UInt32(d.hiddenSize)
    info.vocab_size = UInt32(d.vocabSize)
    info.context_length = UInt32(clamping: m.contextLength)
    info.num_moe_layers = UInt32(m.numMoELayers)
    info.num_experts = UInt32(d.moe?.numExperts ?? 0)
    info.top_k = UInt32(d.moe?.topK ?? 0)
    info.bos_token_id = m.tokenizer?.bosTokenId ?? MOE_NO_TOKEN
    info.eos_token_id = m.tokenizer?.eosTokenId ?? MOE_NO_TOKEN
    info.weight_dtype = moe_dtype(rawValue: m.weightDType.rawValue)
    info.weight_bytes = UInt64(m.weightBytes)
    info.weight_bytes_per_token = UInt64(m.weightBytesPerToken)
    try writeResult(info, to: out, "out")
  }
}

// MARK: - Tokenizer

/// UTF-8 bytes of a caller buffer as a String; invalid UTF-8 is an error.
func utf8Argument(_ p: UnsafePointer<CChar>?, _ length: Int, _ name: String) throws -> String {
  guard length > 0 else { return "" }
  guard let p else { throw MoEError(.nullPointer, "\(name) is NULL") }
  let bytes = UnsafeRawBufferPointer(start: p, count: length)
  guard let s = String(validating: bytes, as: UTF8.self) else {
    throw MoEError.invalid("\(name) is not valid UTF-8")
  }
  return s
}

@c @implementation
public func moe_model_tokenize(_ model: OpaquePointer?, _ text: UnsafePointer<CChar>!, _ length: Int,
                               _ add_special: Int32, _ tokens: UnsafeMutablePointer<Int32>!, _ capacity: Int,
                               _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_tokenize") {
    let m = try handleObject(model, DecoderModel.self, "model")
    let ids = try m.requireTokenizer().encode(try utf8Argument(text, length, "text"), addSpecial: add_special != 0)
    try writeValues(ids, tokens, capacity, needed, "tokens", unit: "ids")
  }
}

/// Copies `count` ids from caller memory, checking each against the vocabulary.
func tokenArgument(_ tokens: UnsafePointer<Int32>?, _ count: Int, vocab: Int) throws -> [Int32] {
  guard count > 0 else { return [] }
  guard let tokens else { throw MoEError(.nullPointer, "tokens is NULL") }
  guard count <= 1 << 30 else { throw MoEError.invalid("count \(count) is absurdly large") }
  let ids = Array(UnsafeBufferPointer(start: tokens, count: count))
  if let bad = ids.firstIndex(where: { $0 < 0 || Int($0) >= vocab }) {
    throw MoEError.invalid("tokens[\(bad)] is \(ids[bad]), outside the vocabulary (0..<\(vocab))")
  }
  return ids
}

@c @implementation
public func moe_model_detokenize(_ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>!, _ count: Int,
                                 _ skip_special: Int32, _ buffer: UnsafeMutablePointer<CChar>!, _ capacity: Int,
                                 _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_detokenize") {
    let m = try handleObject(model, DecoderModel.self, "model")
    let tokenizer = try m.requireTokenizer()
    // Ids of a padded vocabulary beyond the tokenizer's have no text.
    let ids = try tokenArgument(tokens, count, vocab: m.vocabSize)
    try writeText(tokenizer.decode(ids, skipSpecial: skip_special != 0), buffer, capacity, needed)
  }
}

// MARK: - Logits and evaluation

@c @implementation
public func moe_model_logits(_ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>!, _ count: Int,
                             _ logits: UnsafeMutablePointer<Float>!, _ capacity: Int,
                             _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_logits") {
    let m = try handleObject(model, DecoderModel.self, "model")
    guard count > 0 else { throw MoEError.invalid("count is 0; pass at least one token") }
    guard count <= m.contextLength else {
      throw MoEError.invalid("count is \(count) but the context length is \(m.contextLength)")
    }
    let ids = try tokenArgument(tokens, count, vocab: m.vocabSize)
    guard let dst = try outputBuffer(logits, capacity: capacity, needed: needed, count: count * m.vocabSize,
                                     "logits", unit: "floats (count * vocab_size)") else { return }
    try m.logits(tokens: ids, into: dst)
  }
}

@c @implementation
public func moe_eval_params_init(_ params: UnsafeMutablePointer<moe_eval_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_eval_params_init")
}

func evaluate(_ out: UnsafeMutablePointer<moe_eval_result>?, _ m: DecoderModel, _ ids: [Int32],
              _ params: UnsafePointer<moe_eval_params>?) throws {
  if let out { try checkResult(out, "out") }
  let p = try readParameters(params, "params")
  var options = EvalOptions()
  options.seqLen = Int(p.seq_len)
  guard p.max_tokens <= UInt64(Int.max) else { throw MoEError.invalid("params->max_tokens is too large") }
  options.maxTokens = Int(p.max_tokens)
  options.heldOut = p.held_out
  var progress: ((Int, Int) -> Bool)? = nil
  if let fn = p.progress {
    let user = p.user_data
    progress = { done, total in fn(UInt64(done), UInt64(total), "eval", user) == 0 }
  }
  let r = try m.evaluate(tokens: ids, options: options, progress: progress)
  guard let out else { return }
  var result = moe_eval_result()
  result.tokens_scored = UInt64(r.tokensScored)
  result.windows = UInt32(r.windows)
  result.mean_nll = r.meanNLL
  result.perplexity = r.perplexity
  result.seconds = r.seconds
  result.tokens_per_second = r.seconds > 0 ? Double(r.tokensScored + r.windows) / r.seconds : 0
  result.aux_loss = r.meanBalance
  try writeResult(result, to: out, "out")
}

@c @implementation
public func moe_model_eval_text(_ out: UnsafeMutablePointer<moe_eval_result>!, _ model: OpaquePointer?,
                                _ text: UnsafePointer<CChar>!, _ length: Int,
                                _ params: UnsafePointer<moe_eval_params>!) -> moe_status {
  guarded("moe_model_eval_text") {
    let m = try handleObject(model, DecoderModel.self, "model")
    let ids = try m.requireTokenizer().encode(try utf8Argument(text, length, "text"), addSpecial: false, parseSpecial: false)
    try evaluate(out, m, ids, params)
  }
}

@c @implementation
public func moe_model_eval_tokens(_ out: UnsafeMutablePointer<moe_eval_result>!, _ model: OpaquePointer?,
                                  _ tokens: UnsafePointer<Int32>!, _ count: Int,
                                  _ params: UnsafePointer<moe_eval_params>!) -> moe_status {
  guarded("moe_model_eval_tokens") {
    let m = try handleObject(model, DecoderModel.self, "model")
    try evaluate(out, m, try tokenArgument(tokens, count, vocab: m.vocabSize), params)
  }
}

@c @implementation
public func moe_model_router_stats(_ model: OpaquePointer?, _ layer: UInt32,
                                   _ tokens_per_expert: UnsafeMutablePointer<UInt64>!, _ capacity: Int,
                                   _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_router_stats") {
    let m = try handleObject(model, DecoderModel.self, "model")
    let counts = m.routerCounts
    guard Int(layer) < counts.count else {
      throw MoEError.invalid("layer is \(layer); the model has \(counts.count) layers")
    }
    try writeValues(counts[Int(layer)].map { UInt64($0) }, tokens_per_expert, capacity, needed, "tokens_per_expert",
                    unit: "counts")
  }
}

// MARK: - Generation

@c @implementation
public func moe_generate_params_init(_ params: UnsafeMutablePointer<moe_generate_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_generate_params_init")
}

@c @implementation
public func moe_model_generate(_ out: UnsafeMutablePointer<moe_generate_result>!, _ model: OpaquePointer?,
                               _ prompt: UnsafePointer<CChar>!, _ params: UnsafePointer<moe_generate_params>!,
                               _ text: UnsafeMutablePointer<CChar>!, _ capacity: Int,
                               _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_generate") {
    let m = try handleObject(model, DecoderModel.self, "model")
    if let out { try checkResult(out, "out") }
    guard let prompt else { throw MoEError(.nullPointer, "prompt is NULL") }
    guard let promptText = String(validatingCString: prompt) else { throw MoEError.invalid("prompt is not valid UTF-8") }
    guard text != nil || capacity == 0 else { throw MoEError(.nullPointer, "text is NULL but capacity is \(capacity)") }
    let p = try readParameters(params, "params")
    var o = GenerateOptions()
    o.maxNewTokens = Int(p.max_new_tokens)
    o.temperature = p.temperature
    o.topK = Int(p.top_k)
    o.topP = p.top_p
    o.seed = p.seed
    o.chat = p.chat != 0
    o.addSpecial = p.add_special != 0
    o.stopAtEndOfSequence = p.ignore_eos == 0
    var onToken: ((Int32, String) -> Bool)? = nil
    if let fn = p.on_token {
      let user = p.user_data
      onToken = { id, piece in piece.withCString { fn(id, $0, user) == 0 } }
    }
    let r = try m.generate(prompt: promptText, options: o, onToken: onToken)
    if let out {
      var res = moe_generate_result()
      res.prompt_tokens = UInt64(r.promptTokens)
      res.generated_tokens = UInt64(r.tokens.count)
      res.prompt_seconds = r.promptSeconds
      res.decode_seconds = r.decodeSeconds
      res.tokens_per_second = r.decodeSeconds > 0 ? Double(r.tokens.count) / r.decodeSeconds : 0
      res.stop_reason = moe_stop_reason(rawValue: UInt32(r.stop.rawValue))
      try writeResult(res, to: out, "out")
    }
    try writeText(r.text, text, capacity, needed, "text")
  }
}
