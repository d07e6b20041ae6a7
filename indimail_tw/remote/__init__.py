"""Remote delivery: mail for other domains leaves by SMTP, as qmail-remote sends it."""
