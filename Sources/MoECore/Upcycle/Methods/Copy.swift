/// Sparse Upcycling (Komatsuzaki et al. 2022): every expert is an exact copy
/// of the dense FFN.
struct CopyMethod: UpcycleMethod {
  var name: String { "copy" }
}
