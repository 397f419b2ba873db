#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoECore

// MARK: - Model lifecycle

@c @implementation
public func moe_model_params_init(_ params: UnsafeMutablePointer<moe_model_params>!) {
  guard let params else { return }
  var p = moe_model_params()
  p.struct_size = MemoryLayout<moe_model_params>.size
  p.weight_dtype = -1
  p.placement = -1
  p.max_context = 0
  params.pointee = p
}

@c @implementation
public func moe_model_load(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ runtime: OpaquePointer?,
                           _ path: UnsafePointer<CChar>!, _ params: UnsafePointer<moe_model_params>!) -> moe_status {
  guarded("moe_model_load") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    let p = try stringArgument(path, "path")
    var c = moe_model_params()
    if let params { c = params.pointee } else { moe_model_params_init(&c) }
    try checkStructSize(c.struct_size, MemoryLayout<moe_model_params>.size, "params")
    var options = ModelLoadOptions()
    switch c.weight_dtype {
    case -1: options.weightDType = nil
    case Int32(bitPattern: MOE_DTYPE_F32.rawValue): options.weightDType = .f32
    case Int32(bitPattern: MOE_DTYPE_BF16.rawValue): options.weightDType = .bf16
    default: throw MoEError.invalid("params->weight_dtype is \(c.weight_dtype); use -1, MOE_DTYPE_F32 or MOE_DTYPE_BF16")
    }
    if c.placement != -1 {
      guard let pl = PlacementPolicy(rawValue: c.placement) else {
        throw MoEError.invalid("params->placement has invalid value \(c.placement)")
      }
      options.placement = pl
    }
    options.maxContext = Int(c.max_context)
    out.pointee = retainedHandle(try DecoderModel(path: p, runtime: rt, options: options))
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
    try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_model_info>.size, "out")
    let m = try handleObject(model, DecoderModel.self, "model")
    let d = m.description
    var info = moe_model_info()
    info.struct_size = MemoryLayout<moe_model_info>.size
    copyText(d.architecture.rawValue, into: &info.architecture)
    info.num_layers = UInt32(d.numLayers)
    info.hidden_size = UInt32(d.hiddenSize)
    info.vocab_size = UInt32(d.vocabSize)
    info.context_length = UInt32(clamping: m.contextLength)
    info.num_moe_layers = UInt32(m.numMoELayers)
    info.num_experts = UInt32(d.moe?.numExperts ?? 0)
    info.top_k = UInt32(d.moe?.topK ?? 0)
    info.bos_token_id = m.tokenizer?.bosTokenId ?? -1
    info.eos_token_id = m.tokenizer?.eosTokenId ?? -1
    info.weight_dtype = m.weightDType == .bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32
    info.weight_bytes = UInt64(m.weightBytes)
    info.weight_bytes_per_token = UInt64(m.weightBytesPerToken)
    out.pointee = info
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
                               _ count: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_tokenize") {
    let m = try handleObject(model, DecoderModel.self, "model")
    guard let count else { throw MoEError(.nullPointer, "count is NULL") }
    let ids = try m.requireTokenizer().encode(try utf8Argument(text, length, "text"), addSpecial: add_special != 0)
    count.pointee = ids.count
    guard capacity >= ids.count else {
      throw MoEError(.bufferTooSmall, "the text has \(ids.count) tokens but capacity is \(capacity)")
    }
    guard !ids.isEmpty else { return }
    guard let tokens else { throw MoEError(.nullPointer, "tokens is NULL") }
    for (i, t) in ids.enumerated() { tokens[i] = t }
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
                             _ logits: UnsafeMutablePointer<Float>!, _ capacity: Int) -> moe_status {
  guarded("moe_model_logits") {
    let m = try handleObject(model, DecoderModel.self, "model")
    guard count > 0 else { throw MoEError.invalid("count is 0; pass at least one token") }
    guard count <= m.contextLength else {
      throw MoEError.invalid("count is \(count) but the context length is \(m.contextLength)")
    }
    let ids = try tokenArgument(tokens, count, vocab: m.vocabSize)
    let need = count * m.vocabSize
    guard capacity >= need else {
      throw MoEError(.bufferTooSmall, "logits need \(need) floats (count * vocab_size) but capacity is \(capacity)")
    }
    guard let logits else { throw MoEError(.nullPointer, "logits is NULL") }
    try m.logits(tokens: ids, into: logits)
  }
}

@c @implementation
public func moe_eval_params_init(_ params: UnsafeMutablePointer<moe_eval_params>!) {
  guard let params else { return }
  var p = moe_eval_params()
  p.struct_size = MemoryLayout<moe_eval_params>.size
  p.seq_len = 0
  p.max_tokens = 0
  p.progress = nil
  p.user_data = nil
  params.pointee = p
}

func evaluate(_ out: UnsafeMutablePointer<moe_eval_result>?, _ m: DecoderModel, _ ids: [Int32],
              _ params: UnsafePointer<moe_eval_params>?) throws {
  if let out { try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_eval_result>.size, "out") }
  var p = moe_eval_params()
  if let params { p = params.pointee } else { moe_eval_params_init(&p) }
  try checkStructSize(p.struct_size, MemoryLayout<moe_eval_params>.size, "params")
  var options = EvalOptions()
  options.seqLen = Int(p.seq_len)
  guard p.max_tokens <= UInt64(Int.max) else { throw MoEError.invalid("params->max_tokens is too large") }
  options.maxTokens = Int(p.max_tokens)
  var progress: ((Int, Int) -> Bool)? = nil
  if let fn = p.progress {
    let user = p.user_data
    progress = { done, total in fn(UInt64(done), UInt64(total), "eval", user) == 0 }
  }
  let r = try m.evaluate(tokens: ids, options: options, progress: progress)
  guard let out else { return }
  var result = moe_eval_result()
  result.struct_size = MemoryLayout<moe_eval_result>.size
  result.tokens_scored = UInt64(r.tokensScored)
  result.windows = UInt32(r.windows)
  result.mean_nll = r.meanNLL
  result.perplexity = r.perplexity
  result.seconds = r.seconds
  result.tokens_per_second = r.seconds > 0 ? Double(r.tokensScored + r.windows) / r.seconds : 0
  result.balance = r.meanBalance
  out.pointee = result
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
                                   _ experts: UnsafeMutablePointer<UInt32>!) -> moe_status {
  guarded("moe_model_router_stats") {
    let m = try handleObject(model, DecoderModel.self, "model")
    let counts = m.routerCounts
    guard Int(layer) < counts.count else {
      throw MoEError.invalid("layer is \(layer); the model has \(counts.count) layers")
    }
    let row = counts[Int(layer)]
    experts?.pointee = UInt32(row.count)
    if let tokens_per_expert {
      for e in 0..<min(max(capacity, 0), row.count) { tokens_per_expert[e] = UInt64(row[e]) }
    }
  }
}

// MARK: - Generation

@c @implementation
public func moe_generate_params_init(_ params: UnsafeMutablePointer<moe_generate_params>!) {
  guard let params else { return }
  var p = moe_generate_params()
  p.struct_size = MemoryLayout<moe_generate_params>.size
  p.max_new_tokens = 64
  p.temperature = 0
  p.top_k = 0
  p.top_p = 1
  p.seed = 0
  p.chat = 0
  p.add_special = 1
  p.on_token = nil
  p.user_data = nil
  p.ignore_eos = 0
  params.pointee = p
}

@c @implementation
public func moe_model_generate(_ out: UnsafeMutablePointer<moe_generate_result>!, _ model: OpaquePointer?,
                               _ prompt: UnsafePointer<CChar>!, _ params: UnsafePointer<moe_generate_params>!,
                               _ text: UnsafeMutablePointer<CChar>!, _ capacity: Int,
                               _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_model_generate") {
    let m = try handleObject(model, DecoderModel.self, "model")
    if let out { try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_generate_result>.size, "out") }
    guard let prompt else { throw MoEError(.nullPointer, "prompt is NULL") }
    guard let promptText = String(validatingCString: prompt) else { throw MoEError.invalid("prompt is not valid UTF-8") }
    var p = moe_generate_params()
    if let params { p = params.pointee } else { moe_generate_params_init(&p) }
    try checkStructSize(p.struct_size, MemoryLayout<moe_generate_params>.size, "params")
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
    let bytes = Array(r.text.utf8)
    needed?.pointee = bytes.count + 1
    if let text, capacity > 0 {
      var n = min(bytes.count, capacity - 1)
      while n > 0 && n < bytes.count && bytes[n] & 0xC0 == 0x80 { n -= 1 }  // a UTF-8 boundary
      for i in 0..<n { text[i] = CChar(bitPattern: bytes[i]) }
      text[n] = 0
    }
    if let out {
      var res = moe_generate_result()
      res.struct_size = MemoryLayout<moe_generate_result>.size
      res.prompt_tokens = UInt64(r.promptTokens)
      res.generated_tokens = UInt64(r.tokens.count)
      res.prompt_seconds = r.promptSeconds
      res.decode_seconds = r.decodeSeconds
      res.tokens_per_second = r.decodeSeconds > 0 ? Double(r.tokens.count) / r.decodeSeconds : 0
      res.stop_reason = r.stop.rawValue
      out.pointee = res
    }
  }
}
