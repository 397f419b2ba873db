/// Sparse Upcycling (Komatsuzaki et al. 2022): every expert is an exact copy
/// of the dense FFN.
package struct CopyMethod: UpcycleMethod {
  package var name: String { "copy" }
}
