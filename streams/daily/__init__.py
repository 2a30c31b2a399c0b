"""`greenchannel report`: the day's report for the authorities, its sources and its writers.

The figures are `models.daily.day_figures` of the day's facts. `sources` reads those facts from the
database (`database_facts`) or from the log (`log_facts`, through the audit's reader and the
projector's own batch shape); `view` names the figures' rows and columns (Chinese and English) once
for both writers, `pdf` (fpdf2, the CJK font embedded) and `csvs` (one UTF-8 file per table).
"""
