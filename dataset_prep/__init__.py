"""Data preparation: raw Amazon 2018 files and processed LC-Rec/MQL4GRec splits to RecBole atomic files."""
