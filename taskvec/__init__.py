"""taskvec: task arithmetic in weight space and in the tangent space."""
