"""indimail_tw: an IndiMail-compatible mail server on Twisted."""
