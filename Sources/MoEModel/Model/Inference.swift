// Using a decoder: perplexity evaluation and sampled generation with a KV cache.

import MoEFormats
import MoESupport
#if canImport(Glibc)
import Glibc
#endif

public struct EvalOptions: Sendable {
  /// Tokens per window; windows do not overlap and each starts a fresh
  /// context, so a window's first token is context only. 0 = 512, or the
  /// context length when that is shorter.
  public var seqLen: Int = 0
  /// Stop after this many tokens of data (0 = all).
  public var maxTokens: Int = 0
  /// In [0, 1): evaluate only the part of the data a trainer with
  /// evalFraction = heldOut holds out (heldOutCount); 0 = all of it.
  public var heldOut: Double = 0
  public init() {}
}

/// Tokens that a held-out fraction takes from the end of `count` tokens:
/// floor(count * fraction). The trainer's split (TrainerOptions.evalFraction)
/// and evaluation's (EvalOptions.heldOut) are both this one.
public func heldOutCount(of count: Int, fraction: Double) -> Int {
  Int(Double(count) * fraction)
}

public struct EvalResult: Sendable {
  public var tokensScored = 0
  public var meanNLL: Double = 0
  public var perplexity: Double { exp(meanNLL) }
  public var windows = 0
  public var seconds: Double = 0
  /// Tokens per expert per MoE layer (layers in order; empty for dense layers).
  public var tokensPerExpert: [[Int]] = []
  /// Mean Switch balance figure E * sum f_e P_e over MoE layer calls (1 = balanced).
  public var meanBalance: Double = 0
}

public struct GenerateOptions: Sendable {
  public var maxNewTokens = 64
  /// 0 = greedy.
  public var temperature: Float = 0
  /// 0 = off.
  public var topK = 0
  /// 1 = off.
  public var topP: Float = 1
  public var seed: UInt64 = 0
  /// Wrap the prompt in the model's chat template (ChatML templates).
  public var chat = false
  /// Prepend BOS when the tokenizer asks for it.
  public var addSpecial = true
  /// Stop at the end-of-sequence token (off for benchmarks).
  public var stopAtEndOfSequence = true
  public init() {}
}

public enum StopReason: Int32, Sendable, CaseIterable { case length = 0, endOfSequence = 1, callback = 2 }

public struct GenerateResult: Sendable {
  public var promptTokens = 0
  public var tokens: [Int32] = []
  public var text = ""
  public var promptSeconds: Double = 0
  public var decodeSeconds: Double = 0
  public var stop = StopReason.length
}

extension DecoderModel {
  // MARK: - Evaluation

  /// Cross-entropy of each token given the ones before it in its window.
  /// `progress(done, total)` returns false to cancel.
  public func evaluate(tokens all: [Int32], options: EvalOptions,
                       progress: ((Int, Int) -> Bool)? = nil) throws -> EvalResult {
    let seqLen = options.seqLen == 0 ? min(512, contextLength) : options.seqLen
    guard seqLen >= 2, seqLen <= contextLength else {
      throw MoEError.invalid("seq_len is \(options.seqLen); it must be in 2...\(contextLength) (the context length), or 0")
    }
    guard options.maxTokens >= 0 else { throw MoEError.invalid("max_tokens is \(options.maxTokens)") }
    guard options.heldOut >= 0, options.heldOut < 1 else {
      throw MoEError.invalid("held_out is \(options.heldOut); it must be in [0, 1)")
    }
    let data = options.heldOut > 0 ? Array(all.suffix(heldOutCount(of: all.count, fraction: options.heldOut))) : all
    let tokens = options.maxTokens > 0 ? Array(data.prefix(options.maxTokens)) : data
    guard tokens.count >= 2 else {
      if options.heldOut > 0 {
        throw MoEError.invalid("the held-out part (held_out \(options.heldOut)) of the data's \(all.count) tokens has \(tokens.count) token(s); evaluation needs at least 2")
      }
      throw MoEError.invalid("the data has \(tokens.count) token(s); evaluation needs at least 2")
    }
    resetRouterStatistics()
    let started = monotonicSeconds()
    var result = EvalResult()
    var nllSum: Double = 0
    let losses = try scratch.get("eval_losses", floats: seqLen)
    var start = 0
    while start + 1 < tokens.count {
      let end = min(start + seqLen, tokens.count)
      let window = Array(tokens[start..<end])
      let hidden = try window.withUnsafeBufferPointer { try forwardHidden($0, start: 0) }
      let scored = window.count - 1
      try window.withUnsafeBufferPointer { w in
        try crossEntropy(hidden: hidden, rows: scored, targets: w.baseAddress! + 1, lossScale: 0, losses: losses,
                         dHidden: nil, headGradient: nil, buffers: scratch)
      }
      for i in 0..<scored { nllSum += Double(losses[i]) }
      // A row's loss is NaN when its logits are not finite.
      guard nllSum.isFinite else {
        let bad = (0..<scored).first { !losses[$0].isFinite } ?? 0
        throw MoEError.nonFinite("evaluation: the model's logits are not finite (NaN or infinite) in window \(result.windows + 1), token \(start + bad): \(nonFiniteCause())")
      }
      result.tokensScored += window.count - 1
      result.windows += 1
      start = end
      if let progress, !progress(start, tokens.count) {
        throw MoEError(.cancelled, "evaluation cancelled after \(result.windows) windows")
      }
    }
    result.meanNLL = nllSum / Double(result.tokensScored)
    result.seconds = monotonicSeconds() - started
    result.tokensPerExpert = routerCounts
    result.meanBalance = routerForwards > 0 ? routerBalanceSum / Double(routerForwards) : 0
    return result
  }

  // MARK: - Generation

  /// The prompt's token ids as generation would feed them.
  public func promptTokens(_ prompt: String, options: GenerateOptions) throws -> [Int32] {
    let tokenizer = try requireTokenizer()
    var text = prompt
    if options.chat {
      guard let template = tokenizer.chatTemplate, template.contains("<|im_start|>") else {
        throw MoEError.unsupported("the model's chat template is missing or not ChatML; format the prompt yourself")
      }
      text = "<|im_start|>user\n\(prompt)<|im_end|>\n<|im_start|>assistant\n"
    }
    return tokenizer.encode(text, addSpecial: options.addSpecial)
  }

  /// Generates up to maxNewTokens after `prompt`. `onToken(id, text)` receives
  /// each token with the text it completes (UTF-8 sequences split across
  /// tokens are held back until complete) and returns false to stop.
  public func generate(prompt: String, options: GenerateOptions,
                       onToken: ((Int32, String) -> Bool)? = nil) throws -> GenerateResult {
    guard options.maxNewTokens >= 0 else { throw MoEError.invalid("max_new_tokens is \(options.maxNewTokens)") }
    guard options.temperature.isFinite, options.temperature >= 0 else {
      throw MoEError.invalid("temperature is \(options.temperature); it must be >= 0")
    }
    guard options.topP.isFinite, options.topP > 0, options.topP <= 1 else {
      throw MoEError.invalid("top_p is \(options.topP); it must be in (0, 1]")
    }
    guard options.topK >= 0 else { throw MoEError.invalid("top_k is \(options.topK)") }
    let tokenizer = try requireTokenizer()
    let prompt = try promptTokens(prompt, options: options)
    guard !prompt.isEmpty else { throw MoEError.invalid("the prompt is empty (no tokens)") }
    guard prompt.count < contextLength else {
      throw MoEError.invalid("the prompt has \(prompt.count) tokens but the context length is \(contextLength)")
    }
    var result = GenerateResult()
    result.promptTokens = prompt.count
    let maxNew = min(options.maxNewTokens, contextLength - prompt.count)
    let V = vocabSize
    let logits = try scratch.get("generate_logits", floats: V)
    var rng = Rng(seed: options.seed, stream: [0x67656E])
    var pending: [UInt8] = []
    var bytes: [UInt8] = []

    var t0 = monotonicSeconds()
    var hidden = try prompt.withUnsafeBufferPointer { try forwardHidden($0, start: 0) }
    // The prompt's products, the LM head's included, as one call of its length.
    self.logits(hidden: hidden, rows: (prompt.count - 1)..<prompt.count, into: logits, callTokens: prompt.count)
    result.promptSeconds = monotonicSeconds() - t0
    t0 = monotonicSeconds()
    var position = prompt.count
    while result.tokens.count < maxNew {
      guard let next = sample(logits, V, options, &rng) else {
        throw MoEError.nonFinite("generation: the model's logits for position \(position) are not finite (NaN or infinite): \(nonFiniteCause())")
      }
      if options.stopAtEndOfSequence, let eos = tokenizer.eosTokenId, next == eos {
        result.stop = .endOfSequence
        break
      }
      result.tokens.append(next)
      pending += tokenizer.isSpecial(next) ? [] : tokenizer.tokenBytes(next)
      let complete = completeUTF8Prefix(pending)
      let piece = String(decoding: pending[0..<complete], as: UTF8.self)
      bytes += pending[0..<complete]
      pending.removeFirst(complete)
      if let onToken, !onToken(next, piece) {
        result.stop = .callback
        break
      }
      if result.tokens.count == maxNew { break }
      hidden = try [next].withUnsafeBufferPointer { try forwardHidden($0, start: position) }
      self.logits(hidden: hidden, rows: 0..<1, into: logits)
      position += 1
    }
    result.decodeSeconds = monotonicSeconds() - t0
    // An unfinished UTF-8 sequence at the very end was never streamed; leave
    // it out of the text too, so the text equals the streamed pieces.
    result.text = String(decoding: bytes, as: UTF8.self)
    return result
  }

  /// Picks the next token: argmax at temperature 0, else a draw from the
  /// tempered distribution restricted to the top-k and the top-p nucleus.
  /// nil when a logit is NaN or infinite (there is no meaningful pick).
  package func sample(_ logits: UnsafeMutablePointer<Float>, _ V: Int, _ o: GenerateOptions, _ rng: inout Rng) -> Int32? {
    if o.temperature == 0 {
      // The argmax pass also checks finiteness: x - x is NaN only for NaN or infinite x.
      var best = 0
      var check = logits[0] - logits[0]
      for i in 1..<V {
        let x = logits[i]
        check += x - x
        if x > logits[best] { best = i }
      }
      return check == 0 ? Int32(best) : nil
    }
    guard firstNonFinite(logits, V) == nil else { return nil }
    var candidates = Array(0..<V)
    if o.topK > 0 || o.topP < 1 {
      candidates.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
      if o.topK > 0 { candidates = Array(candidates.prefix(o.topK)) }
    }
    let maxLogit = candidates.map { logits[$0] }.max() ?? 0
    var probs = candidates.map { Double(expf((logits[$0] - maxLogit) / o.temperature)) }
    var total = probs.reduce(0, +)
    if o.topP < 1 {
      var cumulative: Double = 0
      var keep = 0
      for p in probs {
        cumulative += p / total
        keep += 1
        if cumulative >= Double(o.topP) { break }
      }
      probs = Array(probs.prefix(keep))
      candidates = Array(candidates.prefix(keep))
      total = probs.reduce(0, +)
    }
    var u = rng.uniform() * total
    for (i, p) in probs.enumerated() {
      u -= p
      if u <= 0 { return Int32(candidates[i]) }
    }
    return Int32(candidates[candidates.count - 1])
  }
}

/// log(sum(exp(v))) over n floats, with SIMD exp; NaN when any value is NaN
/// or infinite (exp16 clamps its input, so the sum alone would not show it).
package func logSumExp(_ v: UnsafePointer<Float>, _ n: Int) -> Float {
  let (m, finite) = maxAndFinite(v, n)
  guard finite else { return .nan }
  var acc = Vec16()
  let mv = Vec16(repeating: m)
  var i = 0
  while i + 16 <= n {
    acc += exp16(load16(v + i) - mv)
    i += 16
  }
  var sum = acc.sum()
  while i < n {
    sum += expf(v[i] - m)
    i += 1
  }
  return m + logf(sum)
}

/// Length of the longest prefix of `bytes` that ends on a UTF-8 sequence boundary.
func completeUTF8Prefix(_ bytes: [UInt8]) -> Int {
  var i = bytes.count
  // Look back at most 3 bytes for an unfinished sequence start.
  var back = 0
  while back < 4 && i > 0 {
    let b = bytes[i - 1]
    if b & 0xC0 == 0x80 { i -= 1; back += 1; continue }
    let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
    let have = bytes.count - (i - 1)
    return have >= need ? bytes.count : i - 1
  }
  return bytes.count
}

// MARK: - Names

extension StopReason: NamedCase {
  public var caseName: String {
    switch self {
    case .length: return "length"
    case .endOfSequence: return "eos"
    case .callback: return "callback"
    }
  }
}
