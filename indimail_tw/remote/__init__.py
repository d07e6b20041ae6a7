"""Remote delivery: mail for other domains leaves by SMTP, as qmail-remote sends it.

==================  ===============================================================
``agent``           :class:`RemoteDeliveryAgent` (IDeliveryAgent) and
                    :func:`build_remote_agent`: batching, routing, retries over
                    the exchangers, results
``routes``          smtproutes / moresmtproutes.cdb -> :class:`NextHop`
``mx``              MX, CNAME, null MX and A/AAAA through twisted.names
``ipme``            our own addresses (+ ``moreipme`` - ``notipme``)
``tcpto``           the table of hosts that failed recently; qmail-tcpto/qmail-tcpok
``tls``             tlshosts / notlshosts / notlhosts and the TLS client options
``pool``            per-host concurrency and the cache of idle connections
``client_parser``   the sans-IO SMTP client (:class:`ClientCore`)
``replies``         reply reading, EHLO capabilities, xtext
``body``            CRLF + dot-stuffing of the message, and the pre-scan
``client``          the Twisted protocol that drives a ClientCore
==================  ===============================================================
"""

from indimail_tw.remote.agent import RemoteDeliveryAgent, build_remote_agent

__all__ = ["RemoteDeliveryAgent", "build_remote_agent"]
