import MoESupport
import MoEFormats
import MoERuntime
import MoEModel
#if canImport(Glibc)
import Glibc
#endif

// Calibration: the dense model runs over real tokens on the runtime and every
// dense FFN layer's activations are summarized as they pass (CalibrationStatistics).
// Memory holds the per-layer statistics and the fixed token sample, not the
// data: sequences are read, run and dropped one at a time.

/// What calibration reads and how it summarizes.
public struct CalibrationOptions: Sendable {
  /// Text (tokenized with the model's tokenizer), or whitespace-separated
  /// token ids with `ids`.
  public var path: String
  public var ids = false
  /// Tokens used from the start of the file (fewer if the file holds fewer).
  public var maxTokens = 16384
  /// Tokens whose activations and router inputs are kept (evenly spaced).
  public var sampleRows = 256
  /// Quantile of |a| over a layer that counts as firing.
  public var fireQuantile = 0.9
  /// Tokens per forward sequence (at most the model's context).
  public var sequenceLength = 512

  public init(path: String) { self.path = path }

  /// Fewest calibration tokens accepted.
  public static let minimumTokens = 64
}

/// Accumulates the statistics of every layer as forwards pass.
package final class Calibrator: FFNObserver {
  private final class Accumulator {
    var sumAbs: [Double]
    var sumSquare: [Double]
    var fires: [Int]
    package var threshold: Float?
    package var sketch: [Float]
    package var routerInputs: [Float]
    init(hidden H: Int, intermediate I: Int, samples S: Int) {
      sumAbs = .init(repeating: 0, count: I)
      sumSquare = .init(repeating: 0, count: I)
      fires = .init(repeating: 0, count: I)
      sketch = .init(repeating: 0, count: S * I)
      routerInputs = .init(repeating: 0, count: S * H)
    }
  }

  private let layers: [Accumulator]
  private let samplePositions: [Int]
  private let fireQuantile: Double
  private let hidden: Int, intermediate: Int
  /// Global index of the current sequence's first token.
  package var offset = 0
  private(set) var seen = 0

  package init(layers L: Int, hidden H: Int, intermediate I: Int, samplePositions: [Int], fireQuantile: Double) {
    let S = samplePositions.count
    layers = (0..<L).map { _ in Accumulator(hidden: H, intermediate: I, samples: S) }
    self.samplePositions = samplePositions
    self.fireQuantile = fireQuantile
    hidden = H
    intermediate = I
  }

  /// Evenly spaced token positions: the middle of each of `rows` equal parts of 0 ..< tokens.
  package static func samplePositions(rows: Int, tokens N: Int) -> [Int] {
    let S = min(rows, N)
    return (0..<S).map { j in (2 * j + 1) * N / (2 * S) }
  }

  /// The `q` quantile of |values| (nearest rank).
  package static func absQuantile(_ values: UnsafeBufferPointer<Float>, _ q: Double) -> Float {
    var a = values.map { abs($0) }
    a.sort()
    guard !a.isEmpty else { return 0 }
    let rank = min(a.count - 1, max(0, Int((q * Double(a.count)).rounded(.up)) - 1))
    return a[rank]
  }

  package func observe(layer l: Int, routerInput: UnsafePointer<Float>, activations act: UnsafePointer<Float>,
                       rows T: Int, hidden H: Int, intermediate I: Int) {
    guard l < layers.count, H == hidden, I == intermediate else { return }
    let a = layers[l]
    if a.threshold == nil {
      a.threshold = Self.absQuantile(UnsafeBufferPointer(start: act, count: T * I), fireQuantile)
    }
    let threshold = a.threshold ?? 0
    a.sumAbs.withUnsafeMutableBufferPointer { sumAbs in
      a.sumSquare.withUnsafeMutableBufferPointer { sumSquare in
        a.fires.withUnsafeMutableBufferPointer { fires in
          for t in 0..<T {
            let row = act + t * I
            for i in 0..<I {
              let v = row[i], m = abs(v)
              sumAbs[i] += Double(m)
              sumSquare[i] += Double(v) * Double(v)
              if m > threshold { fires[i] += 1 }
            }
          }
        }
      }
    }
    // The sampled tokens of this sequence (positions are sorted).
    var j = firstSample(atOrAfter: offset)
    while j < samplePositions.count && samplePositions[j] < offset + T {
      let t = samplePositions[j] - offset
      a.sketch.withUnsafeMutableBufferPointer { ($0.baseAddress! + j * I).update(from: act + t * I, count: I) }
      a.routerInputs.withUnsafeMutableBufferPointer { ($0.baseAddress! + j * H).update(from: routerInput + t * H, count: H) }
      j += 1
    }
    if l == layers.count - 1 { seen = offset + T }
  }

  private func firstSample(atOrAfter p: Int) -> Int {
    var lo = 0, hi = samplePositions.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if samplePositions[mid] < p { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }

  package func statistics(tokens N: Int, dataHash: UInt64, fingerprint: UInt64) -> CalibrationStatistics {
    let n = Double(max(N, 1))
    let stats = layers.map { a in
      LayerStatistics(absMean: a.sumAbs.map { Float($0 / n) }, squareMean: a.sumSquare.map { Float($0 / n) },
                      fireFrequency: a.fires.map { Float(Double($0) / n) }, threshold: a.threshold ?? 0,
                      sketch: a.sketch, routerInputs: a.routerInputs)
    }
    return CalibrationStatistics(layers: stats, hidden: hidden, intermediate: intermediate,
                                 sampleRows: samplePositions.count, tokens: N, dataHash: dataHash,
                                 modelFingerprint: fingerprint, fireQuantile: fireQuantile)
  }

  // MARK: Running

  /// The dense model of `checkpoint` on a runtime of its own (all cores,
  /// the caller's thread not pinned), for calibration and router prompts.
  static func denseModel(_ checkpoint: Checkpoint) throws -> DecoderModel {
    guard !checkpoint.description.architecture.isMoE else {
      throw MoEError.unsupported("'\(checkpoint.path)' is an MoE checkpoint (\(checkpoint.description.architecture.rawValue)); calibration runs a dense model")
    }
    return try DecoderModel(checkpoint: checkpoint, runtime: try Runtime(threads: 0, pin: false))
  }

  /// Loads the dense model of `checkpoint` and collects its statistics.
  static func collect(checkpoint: Checkpoint, options o: CalibrationOptions) throws -> CalibrationStatistics {
    try collect(model: try denseModel(checkpoint), checkpoint: checkpoint, options: o)
  }

  /// Runs `model` (dense) over the calibration data and returns its statistics.
  static func collect(model: DecoderModel, checkpoint: Checkpoint, options o: CalibrationOptions) throws -> CalibrationStatistics {
    let d = model.description
    guard !d.architecture.isMoE else { throw MoEError.unsupported("calibration needs a dense model") }
    guard o.maxTokens >= CalibrationOptions.minimumTokens else {
      throw MoEError.invalid("calibration tokens must be at least \(CalibrationOptions.minimumTokens) (got \(o.maxTokens))")
    }
    guard o.sampleRows >= 1 && o.sampleRows <= 1 << 16 else {
      throw MoEError.invalid("calibration sample rows must be in 1..65536 (got \(o.sampleRows))")
    }
    guard o.fireQuantile > 0 && o.fireQuantile < 1 else {
      throw MoEError.invalid("fire quantile must be in (0, 1) (got \(o.fireQuantile))")
    }
    // The sample is kept for every layer: refuse one that cannot fit in memory.
    let sampleBytes = Double(o.sampleRows) * Double(d.intermediateSize + d.hiddenSize) * 4 * Double(d.numLayers)
    let memory = physicalMemoryBytes()
    guard memory == 0 || sampleBytes <= Double(memory) / 2 else {
      throw MoEError(.outOfMemory, "\(o.sampleRows) calibration samples need \(Int(sampleBytes / Double(1 << 20))) MiB for this model's \(d.numLayers) layers, more than half of this machine's \(memory >> 20) MiB; use fewer samples")
    }
    let tokens = try readTokens(path: o.path, ids: o.ids, limit: o.maxTokens, model: model)
    guard tokens.count >= CalibrationOptions.minimumTokens else {
      throw MoEError.invalid("calibration data '\(o.path)' gives \(tokens.count) tokens; at least \(CalibrationOptions.minimumTokens) are needed")
    }
    let calibrator = Calibrator(layers: d.numLayers, hidden: d.hiddenSize, intermediate: d.intermediateSize,
                                samplePositions: samplePositions(rows: o.sampleRows, tokens: tokens.count),
                                fireQuantile: o.fireQuantile)
    model.ffnObserver = calibrator
    defer { model.ffnObserver = nil }
    let L = max(1, min(o.sequenceLength, model.contextLength))
    try tokens.withUnsafeBufferPointer { all in
      var start = 0
      while start < all.count {
        let end = min(all.count, start + L)
        calibrator.offset = start
        _ = try model.forwardHidden(UnsafeBufferPointer(rebasing: all[start..<end]), start: 0)
        start = end
      }
    }
    return calibrator.statistics(tokens: tokens.count, dataHash: tokens.withUnsafeBytes { fnv1a64($0) },
                                 fingerprint: try CalibrationStatistics.fingerprint(of: checkpoint))
  }

  /// Up to `limit` tokens from the start of a text file (tokenized in pieces
  /// cut at line ends) or a file of whitespace-separated token ids.
  static func readTokens(path: String, ids: Bool, limit: Int, model: DecoderModel) throws -> [Int32] {
    guard FileSystem.isRegularFile(path) else { throw MoEError.notFound("calibration data '\(path)' is not a readable file") }
    let file = try MappedFile(path: path)
    // `bytes` points into the mapping, which lives as long as `file`.
    defer { withExtendedLifetime(file) {} }
    let bytes = file.bytes
    guard bytes.count > 0 else { throw MoEError.invalid("calibration data '\(path)' is empty") }
    var out: [Int32] = []
    if ids {
      let V = model.vocabSize
      var i = 0
      while i < bytes.count && out.count < limit {
        let c = bytes[i]
        if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 || c == 0x2C { i += 1; continue }
        var value = 0, digits = 0
        while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
          value = value * 10 + Int(bytes[i] - 0x30)
          digits += 1
          i += 1
          guard value < V else { throw MoEError.invalid("calibration data '\(path)': token id at byte \(i - digits) is outside the vocabulary (0..<\(V))") }
        }
        guard digits > 0 else {
          throw MoEError.format("calibration data '\(path)': byte \(i) is not part of a token id (with ids, the file holds whitespace-separated token ids)")
        }
        out.append(Int32(value))
      }
      return out
    }
    let tokenizer = try model.requireTokenizer()
    var start = 0
    let piece = 16 << 10
    while start < bytes.count && out.count < limit {
      var end = min(bytes.count, start + piece)
      while end < bytes.count && bytes[end - 1] != 0x0A { end += 1 }
      let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
      out += tokenizer.encode(text, addSpecial: false, parseSpecial: false)
      start = end
    }
    if out.count > limit { out.removeLast(out.count - limit) }
    return out
  }
}

/// The mean router input (normed hidden state) of every layer over the
/// tokens of one prompt, and a bounded sample of those inputs.
package final class RouterInputMean: FFNObserver {
  package var sums: [[Double]]
  package var rows = 0
  package var samples: [[Float]]
  let maxSamples: Int

  init(layers L: Int, hidden H: Int, maxSamples: Int) {
    sums = Array(repeating: Array(repeating: 0, count: H), count: L)
    samples = Array(repeating: [], count: L)
    self.maxSamples = maxSamples
  }

  func reset() {
    for l in sums.indices { for i in sums[l].indices { sums[l][i] = 0 } }
    rows = 0
  }

  package func observe(layer l: Int, routerInput: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                       rows T: Int, hidden H: Int, intermediate: Int) {
    guard l < sums.count, H == sums[l].count else { return }
    for t in 0..<T {
      for i in 0..<H { sums[l][i] += Double(routerInput[t * H + i]) }
      if samples[l].count < maxSamples * H { samples[l] += UnsafeBufferPointer(start: routerInput + t * H, count: H) }
    }
    if l == 0 { rows += T }
  }

  /// Mean router input per layer for each line of `path` (one entry per
  /// non-empty line), the router inputs seen, and the FNV-1a hash of the file.
  static func collect(model: DecoderModel, path: String, expectedLines: Int, what: String) throws
    -> (means: [[[Float]]], samples: [[Float]], hash: UInt64) {
    guard FileSystem.isRegularFile(path) else { throw MoEError.notFound("\(what) '\(path)' is not a readable file") }
    let bytes = try FileSystem.readAll(path, limit: 64 << 20)
    let text = String(decoding: bytes, as: UTF8.self)
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { String($0).trimmingSpaces }
      .filter { !$0.isEmpty }
    guard lines.count == expectedLines else {
      throw MoEError.invalid("\(what) '\(path)' has \(lines.count) non-empty lines; it needs one line per expert (\(expectedLines))")
    }
    let tokenizer = try model.requireTokenizer()
    let d = model.description
    let observer = RouterInputMean(layers: d.numLayers, hidden: d.hiddenSize, maxSamples: 1024)
    model.ffnObserver = observer
    defer { model.ffnObserver = nil }
    var means: [[[Float]]] = Array(repeating: [], count: d.numLayers)  // [layer][line] -> [H]
    for (n, line) in lines.enumerated() {
      var tokens = tokenizer.encode(line, addSpecial: false, parseSpecial: false)
      guard !tokens.isEmpty else { throw MoEError.invalid("\(what) '\(path)': line \(n + 1) gives no tokens") }
      if tokens.count > model.contextLength { tokens.removeLast(tokens.count - model.contextLength) }
      observer.reset()
      _ = try tokens.withUnsafeBufferPointer { try model.forwardHidden($0, start: 0) }
      for l in 0..<d.numLayers { means[l].append(observer.sums[l].map { Float($0 / Double(max(1, observer.rows))) }) }
    }
    return (means, observer.samples, fnv1a64(bytes))
  }
}
