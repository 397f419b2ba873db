/// Noise upcycling: each expert is a copy with N(0, noise_std^2) added to a
/// fraction `ratio` of its neurons (chosen as drop chooses them).

import MoESupport
import MoEFormats
package struct NoiseMethod: UpcycleMethod {
  package var name: String { "noise" }

  package func needsStatistics(_ o: UpcycleOptions) -> Bool { DropMethod().needsStatistics(o) }

  package func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    try DropMethod().validate(o, intermediate: I)
  }

  package func adjust(_ b: ExpertBuilder, expert e: Int, _ p: Projection, _ dst: UnsafeMutablePointer<Float>) {
    let H = b.dense.hidden, I = b.dense.intermediate
    let selected = b.perturbedNeurons(e, p)
    guard !selected.isEmpty else { return }
    var rng = b.valueStream(expert: e, p)
    let std = b.options.noiseStd
    if p == .down {
      for h in 0..<H { for i in selected { dst[h * I + i] += Float(rng.normal() * std) } }
    } else {
      for i in selected { for h in 0..<H { dst[i * H + h] += Float(rng.normal() * std) } }
    }
  }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    DropMethod().record(o) + [("noise_std", .float(o.noiseStd))]
  }
}
