import MoESupport
#if canImport(Glibc)
import Glibc
#endif

/// Granular upcycling (NVIDIA 2024): each dense FFN is cut into G slices of
/// I/G neurons; expert e holds slice e mod G, so every group of G experts
/// (one router row shared by the group) is one virtual copy of the dense FFN;
/// outputs are rescaled so the MoE starts equal to the dense model.
package struct GranularMethod: UpcycleMethod {
  package var name: String { "granular" }

  package func groups(_ o: UpcycleOptions) -> Int { o.granularity == 0 ? 1 : o.granularity }

  package func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    let G = groups(o)
    guard I % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the FFN size \(I)") }
    guard o.numExperts % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the number of experts \(o.numExperts)") }
  }

  package func expertSize(_ o: UpcycleOptions, intermediate I: Int) -> Int { I / max(1, groups(o)) }

  package func layout(_ c: LayerContext) throws -> ExpertLayout {
    let o = c.options, m = c.expertSize
    let G = groups(o)
    var out = ExpertLayout(neurons: (0..<o.numExperts).map { e in Array(((e % G) * m)..<((e % G + 1) * m)) })
    let scale = o.renormalizes ? Double(G) : Double(o.numExperts * G) / Double(o.topK)
    switch o.granularScaling {
    case .down: out.downScale = Float(scale)
    case .cubeRoot:
      out.gateUpScale = Float(pow(scale, 1.0 / 3.0))
      out.downScale = out.gateUpScale
    case .none: break
    }
    return out
  }

  package func routerGroup(_ o: UpcycleOptions) -> Int { max(1, o.granularity) }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    [("granularity", .int(groups(o)))]
  }
}
