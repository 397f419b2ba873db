/// Drop-Upcycling (Nakamura et al. 2025): each expert is a copy in which a
/// fraction `ratio` of the neurons (per projection, or one set for all three
/// with `sharedIndices`) is re-drawn from a normal distribution with the
/// mean and standard deviation of those neurons' dense weights.
///
/// With `dropSelect = leastImportant` the re-drawn neurons are the ones a
/// calibration statistic ranks lowest (the same set in every expert; the
/// values each expert draws differ).

import MoESupport
import MoEFormats
package struct DropMethod: UpcycleMethod {
  package var name: String { "drop" }

  package func needsStatistics(_ o: UpcycleOptions) -> Bool { o.dropSelect == .leastImportant }

  package func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    guard o.ratio > 0 && o.ratio <= 1 else { throw MoEError.invalid("ratio must be in (0, 1] (got \(o.ratio))") }
    try CopyMethod().validate(o, intermediate: I)
  }

  package func adjust(_ b: ExpertBuilder, expert e: Int, _ p: Projection, _ dst: UnsafeMutablePointer<Float>) {
    let H = b.dense.hidden, I = b.dense.intermediate
    let selected = b.perturbedNeurons(e, p)
    guard !selected.isEmpty else { return }
    var rng = b.valueStream(expert: e, p)
    // Statistics of the selected slice of the original dense weight.
    var sum = 0.0, sumSq = 0.0
    let w = b.dense.weights(p)
    w.withUnsafeBufferPointer { src in
      if p == .down {
        for h in 0..<H { for i in selected { let v = Double(src[h * I + i]); sum += v; sumSq += v * v } }
      } else {
        for i in selected { for h in 0..<H { let v = Double(src[i * H + h]); sum += v; sumSq += v * v } }
      }
    }
    let n = Double(selected.count * H)
    let mean = sum / n
    let std = max(0, sumSq / n - mean * mean).squareRoot()
    if p == .down {
      for h in 0..<H { for i in selected { dst[h * I + i] = Float(mean + std * rng.normal()) } }
    } else {
      for i in selected { for h in 0..<H { dst[i * H + h] = Float(mean + std * rng.normal()) } }
    }
  }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    var fields: [(String, JSON)] = [("ratio", .float(o.ratio)), ("shared_indices", .bool(o.sharedIndices)),
                                    ("drop_select", .string(o.dropSelect.caseName))]
    if o.dropSelect == .leastImportant { fields.append(("importance", .string(o.importance.caseName))) }
    return fields
  }
}
