"""The console's words, in Chinese (the default) and English."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LANGUAGES", "translator"]

LANGUAGES = ("zh", "en")

_TEXT: dict[str, tuple[str, str]] = {
    "title": ("通办 政务数据共享与电子证照", "Tongban data sharing and e-licences"),
    "skip": ("跳到正文", "Skip to content"),
    "nav.home": ("首页", "Home"),
    "nav.verify": ("核验证照", "Verify a licence"),
    "nav.audit": ("审计", "Audit"),
    "nav.subject": ("我的数据", "My data"),
    "nav.catalogue": ("目录", "Catalogue"),
    "nav.items": ("事项目录", "Service items"),
    "nav.logout": ("退出", "Sign out"),
    "lang.other": ("English", "中文"),
    "home.lead": (
        "核验电子证照、查询访问日志、查看谁访问了您的数据、浏览共享目录。",
        "Verify e-licences, search the access log, see who accessed your data, browse the catalogue.",  # noqa: E501
    ),
    "home.verify": ("任何人可用，无需登录。", "For anyone; no sign-in."),
    "home.audit": ("审计人员，需登录链接。", "For auditors; needs a sign-in link."),
    "home.subject": (
        "企业或个人，凭一次性链接查看。",
        "For companies and citizens, with a one-time link.",
    ),
    "home.catalogue": ("部门人员，需登录链接。", "For department staff; needs a sign-in link."),
    "verify.title": ("核验电子证照", "Verify an e-licence"),
    "verify.text": ("二维码内容或 SD-JWT", "QR text or SD-JWT"),
    "verify.file": (
        "或上传证照 PDF、二维码图片或 SD-JWT 文件",
        "Or upload the licence PDF, a picture of its QR code, or an SD-JWT file",
    ),
    "verify.submit": ("核验", "Verify"),
    "verify.camera": ("用摄像头扫码", "Scan with the camera"),
    "verify.camera.none": (
        "此浏览器不能扫码，请上传图片。",
        "This browser cannot scan; upload a picture.",
    ),
    "verify.check": ("未通过的检查", "Failed check"),
    "verify.issuer": ("发证部门", "Issuing department"),
    "verify.number": ("证照编号", "Licence number"),
    "verify.type": ("证照类型", "Licence type"),
    "verify.holder": ("持证主体", "Holder"),
    "verify.claims": ("披露的信息", "Disclosed claims"),
    "verify.validity": ("有效期", "Validity"),
    "verify.fresh": (
        "签名以本节点缓存的信任列表核验；状态于 {at} 实时查询登记簿。",
        "Signature checked against this node's cached trust list; status read live from the registry at {at}.",  # noqa: E501
    ),
    "verify.none": ("请粘贴二维码内容或上传文件。", "Paste the QR text or upload a file."),
    "outcome.valid": ("有效", "Valid"),
    "outcome.revoked": ("已吊销", "Revoked"),
    "outcome.suspended": ("已暂停", "Suspended"),
    "outcome.expired": ("已过期", "Expired"),
    "outcome.forged": ("伪造或被篡改", "Forged or altered"),
    "outcome.cancelled": ("已注销", "Cancelled"),
    "outcome.superseded": ("已被新版本替代", "Superseded"),
    "outcome.unreadable": ("无法识别", "Unreadable"),
    "outcome.invalid": ("未通过核验", "Not verified"),
    "login.title": ("登录", "Sign in"),
    "login.continue": ("继续", "Continue"),
    "login.explain": (
        "此链接只能使用一次。点击继续后，本浏览器将保持登录。",
        "This link works once. Continue to sign this browser in.",
    ),
    "login.required": (
        "此页需要登录。请向运维人员索取登录链接（tongban web login-link）。",
        "This page needs a sign-in. Ask the operator for a sign-in link (tongban web login-link).",
    ),
    "login.auditor": (
        "此页仅供具有审计角色的部门使用。",
        "This page is for departments with the auditor role only.",
    ),
    "audit.title": ("访问日志", "Access log"),
    "audit.subject": ("主体标识（统一社会信用代码或身份证号）", "Subject id (USCC or citizen id)"),
    "audit.caller": ("部门", "Department"),
    "audit.officer": ("经办人", "Officer"),
    "audit.dataset": ("数据集", "Dataset"),
    "audit.purpose": ("用途", "Purpose"),
    "audit.case": ("办件编号", "Case"),
    "audit.decision": ("结果", "Decision"),
    "audit.from": ("起始", "From"),
    "audit.to": ("截止", "To"),
    "audit.any": ("全部", "Any"),
    "audit.search": ("查询", "Search"),
    "audit.index": ("序号", "Index"),
    "audit.at": ("时间", "Time"),
    "audit.action": ("操作", "Action"),
    "audit.next": ("下一页", "Next page"),
    "audit.first": ("第一页", "First page"),
    "audit.export": ("导出", "Export"),
    "audit.none": ("没有符合条件的记录。", "No entries match."),
    "audit.verify": ("核验整个日志", "Verify the log"),
    "audit.anomalies": ("异常报告", "Anomaly report"),
    "audit.volume": ("访问量", "Access volume"),
    "audit.covert": ("保密案件", "Covert cases"),
    "audit.logged": (
        "您对个人数据的查看已记入访问日志。",
        "Your view of personal data has been written to the access log.",
    ),
    "entry.title": ("日志条目 {index}", "Log entry {index}"),
    "entry.proof": ("包含证明", "Inclusion proof"),
    "entry.checkpoint": ("签名检查点", "Signed checkpoint"),
    "entry.proved": (
        "已核验：该条目包含在 {size} 条记录的日志中，检查点签名有效。",
        "Verified: the entry is in the log of {size} entries under a validly signed checkpoint.",
    ),
    "entry.leaf": ("叶子（Base64）", "Leaf (Base64)"),
    "verifylog.title": ("核验整个日志", "Verify the whole log"),
    "verifylog.explain": (
        "重新计算默克尔树，检查每个条目、每个签名检查点及其一致性。",
        "Recompute the Merkle tree and check every entry, every signed checkpoint and their consistency.",  # noqa: E501
    ),
    "verifylog.start": ("开始核验", "Start"),
    "verifylog.running": ("正在核验…", "Verifying…"),
    "verifylog.ok": (
        "日志完整：{size} 条记录，{checkpoints} 个签名检查点一致，用时 {seconds} 秒。",
        "The log is intact: {size} entries, {checkpoints} signed checkpoints consistent ({seconds} s).",  # noqa: E501
    ),
    "verifylog.bad": ("日志被改动：{message}", "The log was altered: {message}"),
    "anomalies.title": ("异常报告", "Anomaly report"),
    "anomalies.none": ("该时段没有发现异常。", "No anomalies in this period."),
    "anomalies.kind": ("类型", "Kind"),
    "anomalies.detail": ("说明", "Detail"),
    "anomalies.count": ("次数", "Count"),
    "anomalies.baseline": ("基线", "Baseline"),
    "volume.title": (
        "各部门每日访问量（近 {days} 天）",
        "Accesses per department per day (last {days} days)",
    ),
    "volume.none": ("该时段没有访问。", "No accesses in this period."),
    "supervision.title": ("电子监察", "Supervision"),
    "supervision.intro": (
        "按受理月份统计各部门办件；超期未办结按当前时间 {now} 计。",
        "Each department's cases by the month they were opened; open cases overdue as of {now}.",
    ),
    "supervision.from": ("起始月份", "From month"),
    "supervision.to": ("截止月份", "To month"),
    "supervision.chart": (
        "{department} 各月办件：按时办结、超期办结、超期未办结",
        "{department} by month: decided on time, decided late, overdue and open",
    ),
    "supervision.series.within": ("按时办结", "Decided within the promised limit"),
    "supervision.series.late": ("超期办结", "Decided late"),
    "supervision.series.overdue": ("超期未办结", "Open and overdue"),
    "supervision.month": ("受理月份", "Month opened"),
    "supervision.opened": ("受理", "Opened"),
    "supervision.decided": ("办结", "Decided"),
    "supervision.within": ("按承诺时限办结率", "Within promised limit"),
    "supervision.late": ("超期办结", "Decided late"),
    "supervision.past_legal": ("超法定 {n}", "{n} past legal"),
    "supervision.overdue": ("超期未办结（黄牌/红牌）", "Overdue (promised/legal)"),
    "supervision.repeated": ("多次补正", "补正 more than once"),
    "supervision.immediate": ("即办件率", "Same-day share"),
    "supervision.online": ("全程网办率", "Fully online share"),
    "supervision.no_submission": ("免提交率", "No-submission share"),
    "supervision.days": ("平均用时/承诺/法定（天）", "Average days taken/promised/legal"),
    "supervision.definitions": (
        "定义见 docs/supervision.md：即办件率 = 受理当日办结数 / 办结数；全程网办率 = 所有必需材料均电子获取的办结件 / 有材料核验记录的办结件；免提交率 = 电子获取的必需材料 / 必需材料；天数为自然日。",  # noqa: E501
        "Definitions in docs/supervision.md: same-day share = decided the day opened / decided; fully online = decided cases whose every required material was obtained electronically / decided cases with a resolution; no-submission = required materials obtained electronically / required materials; days are calendar days.",  # noqa: E501
    ),
    "supervision.none": ("该时段没有受理的办件。", "No cases were opened in these months."),
    "covert.title": ("保密案件", "Covert cases"),
    "covert.explain": (
        "具有保密角色的部门可将本部门的案件声明为保密：保密期内，其访问记录不在数据主体的查询中显示。"
        "每个案件列出当前有效的声明；每次声明都记入访问日志。",
        "Departments with the covert role may declare their own cases covert: until the "
        "embargo ends, those accesses are hidden from the subject's view. Each case shows the "
        "declaration in force; every declaration is in the access log.",
    ),
    "covert.logged": (
        "您对保密案件的此次查看已记入访问日志。",
        "This look at the covert cases has been written to the access log.",
    ),
    "covert.all": ("包括已到期的", "Include ended ones"),
    "covert.until": ("保密期至", "Embargo until"),
    "covert.state": ("状态", "State"),
    "covert.in_force": ("保密中", "In force"),
    "covert.ended": ("已到期", "Ended"),
    "covert.declared": ("声明时间", "Declared"),
    "covert.basis": ("法律依据", "Legal basis"),
    "covert.none": ("没有保密案件。", "No covert cases."),
    "subject.title": ("谁访问了我的数据", "Who accessed my data"),
    "subject.for": ("主体：{id}", "Subject: {id}"),
    "subject.withheld": (
        "另有 {n} 条记录属于依法保密的案件，保密期满后显示。",
        "{n} more entries belong to cases kept confidential by law; they appear when the embargo ends.",  # noqa: E501
    ),
    "subject.none": ("没有访问记录。", "No accesses recorded."),
    "subject.self": ("您本人（网页查看）", "You (web console)"),
    "subject.grounds": ("依据", "Grounds"),
    "cases.title": ("我的办件", "My cases"),
    "cases.number": ("办件编号", "Case"),
    "cases.item": ("事项", "Service item"),
    "cases.state": ("状态", "State"),
    "cases.promised": ("承诺办结", "Promised by"),
    "cases.legal": ("法定办结", "Legal limit"),
    "cases.result": ("结果", "Result"),
    "cases.overdue.promised": ("超承诺时限", "past the promised date"),
    "cases.overdue.legal": ("超法定时限", "past the legal limit"),
    "rate.title": ("评价办件", "Rate your case"),
    "rate.intro": (
        "您的办件已办结。请为办理情况打分（1 至 5 分）并留言；评价记入防篡改日志，任何人无法删除。",
        "Your case is decided. Please rate how it was handled (1 to 5) and leave a comment; "
        "the rating goes into the tamper-evident log, and no one can delete it.",
    ),
    "rate.section": ("好差评", "Ratings"),
    "rate.section.intro": (
        "办结的办件可评价一次；1 或 2 分（差评）由办理部门整改答复，答复后可再评价一次。",
        "A decided case can be rated once; a rating of 1 or 2 is answered by the department "
        "(rectification), after which you may rate it once more.",
    ),
    "rate.score": ("评分", "Score"),
    "rate.score.5": ("非常满意", "very good"),
    "rate.score.4": ("满意", "good"),
    "rate.score.3": ("基本满意", "fair"),
    "rate.score.2": ("不满意", "poor"),
    "rate.score.1": ("非常不满意", "very poor"),
    "rate.comment": ("留言（最多 500 字）", "Comment (at most 500 characters)"),
    "rate.submit": ("提交评价", "Send the rating"),
    "rate.thanks": ("感谢您的评价。", "Thank you for your rating."),
    "rate.see": ("在“我的数据”中查看评价和整改答复", "See your ratings and answers in My data"),
    "rate.round.1": ("评价", "Rating"),
    "rate.round.2": ("再评价", "Rating after the answer"),
    "rate.again": (
        "部门已答复整改，您可以再评价一次：",
        "The department has answered; you may rate the case once more:",
    ),
    "rate.rectification.opened": (
        "差评已转办理部门整改，答复后您可在“我的数据”中查看并再评价一次。",
        "Your rating was sent to the department to rectify; once it answers, see the answer "
        "in My data and rate once more.",
    ),
    "rate.rectification.due": ("整改答复期限", "Rectification due by"),
    "rate.answer": ("部门整改答复", "The department's answer"),
    "rate.answer.pending": ("等待部门整改答复。", "Waiting for the department's answer."),
    "rate.outcome.approved": ("准予", "approved"),
    "rate.outcome.refused": ("不予许可", "refused"),
    "packages.title": ("我的一件事", "My packages (one-trip services)"),
    "packages.code": ("一件事", "Package"),
    "packages.coordinator": ("牵头部门", "Coordinator"),
    "packages.opened": ("受理时间", "Opened"),
    "package.state.open": ("办理中", "In progress"),
    "package.state.done": ("已办结", "Done"),
    "package.state.failed": ("未通过", "Not approved"),
    "step.state.waiting": ("待前序", "Waiting for earlier steps"),
    "step.state.ready": ("可受理", "Ready to be opened"),
    "step.state.open": ("办理中", "In progress"),
    "step.state.done": ("已准予", "Approved"),
    "step.state.failed": ("未通过", "Not approved"),
    "step.state.blocked": ("前序未通过", "An earlier step was not approved"),
    "auth.title": ("授权用证", "Authorise use of your licence"),
    "auth.intro": (
        "证照上的个人信息（如法定代表人）只在签发部门授权或您本人授权时提供给其他部门。"
        "在此为一个部门、一个用途、一个办件生成一次性授权码，交给办理您事项的窗口。",
        "Personal claims on your licences (such as the legal representative) go to another "
        "department only under the issuer's grant or your own authorisation. Make a one-time "
        "code here for one department, one purpose and one case, and give it to the office "
        "handling your case.",
    ),
    "auth.department": ("部门", "Department"),
    "auth.licence_type": ("证照类型", "Licence type"),
    "auth.any_type": ("任意", "Any"),
    "auth.hours": ("有效小时数", "Valid for (hours)"),
    "auth.make": ("生成授权码", "Make the code"),
    "auth.made": (
        "授权码（只显示这一次）：",
        "Your code (shown only this once):",
    ),
    "auth.list": ("我的授权", "My authorisations"),
    "auth.expires": ("有效期至", "Valid until"),
    "auth.state": ("状态", "State"),
    "auth.used": ("已使用（{number}）", "Used ({number})"),
    "auth.expired": ("已过期", "Expired"),
    "auth.open": ("未使用", "Not used yet"),
    "catalogue.title": ("共享目录", "Catalogue"),
    "catalogue.keyword": ("关键词", "Keyword"),
    "catalogue.class": ("共享类型", "Share class"),
    "catalogue.owner": ("提供部门", "Owner"),
    "catalogue.fields": ("字段", "Fields"),
    "catalogue.basis": ("法律依据", "Legal basis"),
    "catalogue.personal": ("个人信息", "personal"),
    "catalogue.by_law": ("依法共享", "shared by law,"),
    "catalogue.by_grant": ("仅凭授权共享", "shared only under a grant"),
    "catalogue.none": ("没有符合条件的数据集。", "No datasets match."),
    "catalogue.grants": ("本部门的待办申请", "Your department's pending requests"),
    "catalogue.overdue": ("已超期", "Overdue"),
    "catalogue.due": ("答复期限", "Due"),
    "catalogue.consumer": ("申请部门", "Requested by"),
    "catalogue.nogrants": ("没有待办申请。", "No pending requests."),
    "items.title": ("事项目录", "Service items"),
    "items.intro": (
        "各部门登记的政务服务事项：办结时限，以及每项材料从哪里来（电子证照、共享数据或申请人提交）。",
        "The service items the departments have registered: their time limits, and where "
        "each material comes from (an e-licence, shared data, or the applicant).",
    ),
    "items.department": ("实施部门", "Department"),
    "items.basis": ("设定依据", "Legal basis"),
    "items.legal": ("法定办结时限", "Legal time limit"),
    "items.promised": ("承诺办结时限", "Promised time limit"),
    "items.days": ("{n} 个工作日", "{n} working days"),
    "items.immediate": ("即办件", "Decided on the spot"),
    "items.yes": ("是", "Yes"),
    "items.no": ("否", "No"),
    "items.issues": ("准予后颁发", "An approval issues"),
    "items.issues.none": ("不颁发证照", "No licence"),
    "items.version": ("版本", "Version"),
    "items.material": ("材料", "Material"),
    "items.source": ("来源", "Source"),
    "items.source.licence": ("电子证照", "E-licence"),
    "items.source.dataset": ("共享数据", "Shared data"),
    "items.source.submitted": ("申请人提交", "Submitted by the applicant"),
    "items.disclose": ("披露", "disclosing"),
    "items.key_from": (
        "按材料 {material} 的 {field} 查询",
        "looked up by {field} of material {material}",
    ),
    "items.required": ("必需", "Required"),
    "items.deferral": ("容缺（补交期限）", "Deferral (supply within)"),
    "items.commitment": ("告知承诺（核查期限）", "Commitment (checked within)"),
    "items.none": ("没有符合条件的事项。", "No service items match."),
    "class.unconditional": ("无条件共享", "Unconditional"),
    "class.conditional": ("有条件共享", "Conditional"),
    "class.not_shared": ("不予共享", "Not shared"),
    "decision.allowed": ("允许", "Allowed"),
    "decision.denied": ("拒绝", "Denied"),
    "error.title": ("出错了", "Something went wrong"),
    "error.too_large": (
        "文件太大：最多 {mb} MB。证照 PDF 通常小于 1 MB。",
        "The file is too large: at most {mb} MB. A licence PDF is usually under 1 MB.",
    ),
    "error.not_found": ("没有这个页面。", "There is no such page."),
    "error.bad_request": (
        "请求格式有误，请从页面重新提交。",
        "The request is malformed; send it again from the page.",
    ),
    "error.method": (
        "这个页面不接受这种请求方式，请使用页面上的表单。",
        "This page does not accept that kind of request; use the form on the page.",
    ),
    "error.form_too_large": (
        "提交的内容太大：表单最多 1 MB。",
        "What was sent is too large: a form takes at most 1 MB.",
    ),
    "error.internal": (
        "服务出错（事件 {incident}），请稍后重试。",
        "The service failed (incident {incident}); please retry later.",
    ),
    "error.back": ("返回", "Back"),
}


def translator(lang: str) -> Callable[..., str]:
    """``t(key, **values)`` in ``lang`` (falls back to the key itself if unknown)."""
    which = 1 if lang == "en" else 0

    def t(key: str, **values: object) -> str:
        pair = _TEXT.get(key)
        text = pair[which] if pair else key
        return text.format(**values) if values else text

    return t
