// Creates the ACLs of a secure greenchannel cluster (streams/dev/secure.py's table), as the admin.
//
//   java -cp '<kafka libs>/*' streams/dev/SecureSetup.java ADMIN.properties NODES < ACLS
//
// Waits until the cluster lists NODES brokers, creates every ACL on stdin (one a line:
// "User:NAME RESOURCE PATTERN NAME OPERATION", ALLOW from any host), then waits until the
// brokers' authorizer lists them all. Run by streams/dev/kafka.py; aiokafka has no CreateAcls.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;

public class SecureSetup {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (Reader in = new FileReader(args[0], StandardCharsets.UTF_8)) { props.load(in); }
        int nodes = Integer.parseInt(args[1]);
        long deadline = System.currentTimeMillis() + 120_000;
        List<AclBinding> acls = new ArrayList<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            String[] f = line.trim().split(" ");
            if (f.length != 5) continue;
            acls.add(new AclBinding(new ResourcePattern(ResourceType.valueOf(f[1]), f[3], PatternType.valueOf(f[2])),
                new AccessControlEntry(f[0], "*", AclOperation.valueOf(f[4]), AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(props)) {
            Exception last = null;
            while (true) {
                try {
                    if (admin.describeCluster().nodes().get(10, TimeUnit.SECONDS).size() >= nodes) break;
                } catch (Exception e) { last = e; }
                if (System.currentTimeMillis() > deadline) throw new RuntimeException("no " + nodes + " brokers", last);
                Thread.sleep(200);  // polling the cluster's readiness, with a deadline
            }
            admin.createAcls(acls).all().get(60, TimeUnit.SECONDS);
            Set<AclBinding> want = new HashSet<>(acls);
            while (true) {
                Collection<AclBinding> seen = admin.describeAcls(AclBindingFilter.ANY).values().get(10, TimeUnit.SECONDS);
                if (seen.containsAll(want)) break;
                if (System.currentTimeMillis() > deadline) throw new RuntimeException("ACLs not visible in time");
                Thread.sleep(100);  // polling the authorizer's state, with a deadline
            }
        }
        System.out.println(acls.size() + " ACLs in force");
    }
}
