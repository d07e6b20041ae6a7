from twisted.application.service import ServiceMaker

indimail = ServiceMaker(
    "indimail_tw",
    "indimail_tw.tap",
    "IndiMail-compatible mail server (SMTP, POP3, IMAP, QMTP, QMQP, ODMR)",
    "indimail",
)
