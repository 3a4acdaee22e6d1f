"""The tests, in folders that mirror the code: `modeling/` (modeling_catseg/ and modeling_lseg/), `processing/`,
`training/<sub-package>/` and `benchmarks/`; checks of the whole repository (layout, README) and shared helpers sit
here."""
