"""Secure aggregation: the server learns only the sum of the surviving clients' vectors, under
threshold CKKS (`threshold`) or SecAgg+-style pairwise masks (`masking`), both behind
`SecureAggregator` (`base`)."""
