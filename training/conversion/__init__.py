"""The official-checkpoint converters: CAT-Seg (`catseg`), LSeg (`lseg`), the OpenAI CLIP key map they share and the
choice of converter from a checkpoint's keys (`detect`). The commands are `catseg-convert`, `lseg-convert` and
`ovseg-convert`.

May import `training.core`.
"""
