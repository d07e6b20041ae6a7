"""indimail_tw: an IndiMail-compatible mail server on Twisted."""

from setuptools import find_packages, setup

ADMIN_TOOLS = [
    "vadddomain", "vdeldomain", "vaddaliasdomain", "vmoddomain", "vdominfo",
    "vadduser", "vdeluser", "vpasswd", "vmoduser", "vsetuserquota", "vuserinfo",
    "valias", "vatrn", "vipmap",
]

setup(
    name="indimail_tw",
    version="0.1.0",
    description="IndiMail-compatible mail server (SMTP, POP3, IMAP, QMTP) on Twisted",
    python_requires=">=3.11",
    packages=find_packages(include=["indimail_tw", "indimail_tw.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/indimail.py", "plugins/indimail_cred.py"],
                  "indimail_tw.storage": ["schema/*.sql"]},
    install_requires=[
        "Twisted[tls]>=23.10",
        "pyOpenSSL",
        "service-identity",
        "PyMySQL>=1.0",
        "ldap3",
        "libpass>=1.9",
        "bcrypt",
        "cdbx",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "wheel", "setuptools", "ruff", "imapclient"]},
    entry_points={
        "console_scripts": [
            f"{name}=indimail_tw.admin.{name}:main" for name in ADMIN_TOOLS
        ] + [
            "vchkpass=indimail_tw.auth.vchkpass:main",
            "indimail-demo=indimail_tw.admin.demo:main",
            "tcprules=indimail_tw.policy.tcprules:main",
            "vdelivermail=indimail_tw.delivery.vdelivermail:main",
            "qmail-qread=indimail_tw.queuetools.qread:main",
            "qmail-qstat=indimail_tw.queuetools.qstat:main",
            "qmail-rm=indimail_tw.queuetools.rm:main",
            "qmail-flush=indimail_tw.queuetools.flush:main",
            "qmail-tcpto=indimail_tw.remote.tcpto:main_tcpto",
            "qmail-tcpok=indimail_tw.remote.tcpto:main_tcpok",
        ],
    },
)
