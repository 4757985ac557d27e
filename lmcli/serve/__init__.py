"""What a trained model serves: evaluation, generation, inference (a run dir or an export), the exporters and the
export format."""
