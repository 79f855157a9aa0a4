"""The controlled study's analysis: comparisons (analysis), the held-out mechanism (mechanism), the summary
files (report) and the plots (plots). An experiment: it uses the instruments in evaluation/, never the reverse."""
